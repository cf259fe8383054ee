"""TEMPORARY, delete at merge: keeps this branch importable until the lead switches the importers
of `lakeimg.uris` (in files this branch may not edit) to `lakeimg.storage`."""

from lakeimg.storage import (  # noqa: F401
    NotRegularFileError,
    has_scheme,
    local_path_or_none,
    open_regular_file,
    path_to_uri,
    printable,
    to_uri,
    uri_to_path,
)
