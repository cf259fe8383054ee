"""Example Airflow DAG: the nightly lakeimg ingest on a Spark cluster.

Copy into Airflow's dags folder and set LAKEIMG_* variables. It shells out to spark-submit
with `jobs/ingest_job.py` (a thin call into lakeimg), so Airflow needs no Spark of its own.
The job prints one JSON summary line; a non-zero exit fails the task (rejected files do not:
they are data, in `images_rejects`).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow import DAG
from airflow.operators.bash import BashOperator

LAKEIMG_HOME = os.environ.get("LAKEIMG_HOME", "/opt/lakeimg")
SPARK_MASTER = os.environ.get("LAKEIMG_SPARK_MASTER", "spark://spark-master:7077")
DELTA_PACKAGE = os.environ.get("LAKEIMG_DELTA_PACKAGE", "io.delta:delta-spark_4.2_2.13:4.4.0")
SOURCE = os.environ.get("LAKEIMG_SOURCE", "/data/incoming")
LAKE = os.environ.get("LAKEIMG_LAKE", "/data/lake")

with DAG(
    dag_id="lakeimg_ingest",
    schedule="0 2 * * *",
    start_date=dt.datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # one writer at a time; Delta would retry conflicts, this avoids them
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
    tags=["lakeimg"],
) as dag:
    ingest = BashOperator(
        task_id="ingest",
        bash_command=(
            f"spark-submit --master {SPARK_MASTER} --packages {DELTA_PACKAGE} "
            f"{LAKEIMG_HOME}/jobs/ingest_job.py {SOURCE} --lake {LAKE} "
            "--label-from-path parent --sync-deletes --json"
        ),
    )
