"""What only Azure Blob lakes are tested for on the embedded engine, against Azurite on loopback
(fixture `azurite`): the URL spellings (abfss, adl) and a connection string, a SAS token, and the
mapping of Azure settings onto pyarrow and delta-rs. What S3 and Azure share (ingest, merges,
transform, SQL, training sets, concurrent writers, storage failures, secrets) is in
test_object_store_lakes.py, once per store.
"""

from __future__ import annotations

import base64

import pytest
from object_stores import cli as _cli
from object_stores import jpeg

from lakeimg import Lake
from lakeimg.storage import normalized_storage_options, redact, resolve

CANARY = "lakeimg-SECRET-canary-7f3a9d"  # a secret value that must never be printed or stored


def test_abfss_and_adl_urls_and_a_connection_string_reach_the_same_container(azurite, tmp_path):
    from object_stores import AZURITE_KEY

    src = tmp_path / "src"
    src.mkdir()
    for j in range(2):
        (src / f"{j}.jpg").write_bytes(jpeg(j))
    container = azurite.new_container()
    # Only a connection string: account, key and endpoint come out of it for delta-rs and pyarrow.
    only_string = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    env: dict[str, str] = {}  # no AZURE_* variable: only the option
    written = _cli("ingest", str(src), "--lake", f"az://{container}/lake", "--json",
                   "--storage-option", f"AZURE_STORAGE_CONNECTION_STRING={azurite.connection_string}", env=env)
    assert written.returncode == 0, written.stderr
    # abfss names the account in the host; adl is delta-rs' other spelling of the same container.
    for url, options in ((f"abfss://{container}@devstoreaccount1.dfs.core.windows.net/lake", only_string),
                         (f"adl://{container}/lake", azurite.storage_options)):
        lake = Lake(url, storage_options=options)
        assert lake.tables() == ["images", "images_rejects"]
        assert sorted(u.rsplit("/", 1)[-1] for u in lake.read("images", columns=["uri"])["uri"].to_pylist()) == [
            "0.jpg", "1.jpg"]
    assert AZURITE_KEY not in written.stdout + written.stderr


def test_a_sas_token_alone_reads_and_writes_and_a_wrong_one_is_refused(azurite, tmp_path):
    from lakeimg.errors import StorageAccessError

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(3))
    container = azurite.new_container()
    options = {k: v for k, v in azurite.storage_options.items() if k != "AZURE_STORAGE_ACCOUNT_KEY"}
    lake = Lake(f"az://{container}/lake", storage_options={**options, "AZURE_STORAGE_SAS_TOKEN": "?" + azurite.sas_token()})
    assert lake.ingest([str(src)], workers=0).added == 1
    assert lake.ingest([str(src)], workers=0).unchanged == 1  # the second commit reads the first
    assert lake.read("images", columns=["uri"])["uri"].to_pylist() == [(src / "a.jpg").as_uri()]
    forged = azurite.sas_token(base64.b64encode(CANARY.encode()).decode())
    with pytest.raises(StorageAccessError) as refused:
        Lake(f"az://{container}/other", storage_options={**options, "AZURE_STORAGE_SAS_TOKEN": forged}).ingest(
            [str(src)], workers=0)
    assert forged.rsplit("sig=", 1)[1] not in str(refused.value)


def test_azure_settings_map_onto_pyarrow_and_delta_rs_alike():
    key = base64.b64encode(CANARY.encode()).decode()
    string = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.chinacloudapi.cn"
    options = normalized_storage_options({"AZURE_STORAGE_CONNECTION_STRING": string}, environ={
        "AZURE_STORAGE_ACCOUNT_NAME": "from-env", "HOME": "/root"})
    # The connection string's parts, over the environment; explicit keys of the same layer win.
    assert {k: options[k] for k in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ENDPOINT")} == {
        "AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": key,
        "AZURE_STORAGE_ENDPOINT": "https://acct.blob.core.chinacloudapi.cn"}
    assert normalized_storage_options({"AZURE_STORAGE_CONNECTION_STRING": string, "AZURE_STORAGE_ACCOUNT_NAME": "other"},
                                      environ={})["AZURE_STORAGE_ACCOUNT_NAME"] == "other"
    # A sovereign cloud's host-style endpoint and an emulator's path-style one, as pyarrow's authorities.
    fs, path = resolve("az://photos/raw/a.jpg", {"AZURE_STORAGE_CONNECTION_STRING": string})
    args = fs.__reduce__()[1][0]
    assert path == "photos/raw/a.jpg"
    assert (args["account_name"], args["account_key"], args["blob_storage_authority"], args["dfs_storage_authority"],
            args["blob_storage_scheme"]) == ("acct", key, ".blob.core.chinacloudapi.cn", ".dfs.core.chinacloudapi.cn", "https")
    fs, path = resolve("abfss://photos@devstoreaccount1.dfs.core.windows.net/raw", {
        "AZURE_STORAGE_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1", "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc%2Bdef"})
    args = fs.__reduce__()[1][0]
    assert (path, args["account_name"], args["blob_storage_authority"], args["blob_storage_scheme"], args["sas_token"]) == (
        "photos/raw", "devstoreaccount1", "127.0.0.1:10000", "http", "?sv=1&sig=abc%2Bdef")
    # Keys, SAS tokens and connection strings are secrets.
    text = f"failed with {string} and {key} and ?sv=1&sig=abc%2Bdef"
    assert redact(text, {"AZURE_STORAGE_CONNECTION_STRING": string, "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc%2Bdef"}) == (
        "failed with *** and *** and ***")
    # A library that prints the token inside a URL reorders its fields: the signature goes all the same.
    printed = "GET http://127.0.0.1:10000/devstoreaccount1/c?se=2099-01-01&sig=abc%2Bdef&sp=racwdl&sv=1 failed"
    assert redact(printed, {"AZURE_STORAGE_SAS_TOKEN": "?sv=1&sp=racwdl&se=2099-01-01&sig=abc%2Bdef"}) == (
        "GET http://127.0.0.1:10000/devstoreaccount1/c?se=2099-01-01&sig=***&sp=racwdl&sv=1 failed")
