"""The other engines of `benches/sql-vs-duckdb.sh`, each in-process over the same archive: best of 5 runs, in ms.

    python3 benches/sql_engines.py ENGINE ARCHIVE QUERY    # ENGINE: duckdb, chdb or datafusion-python

The query is written as Weir takes it (PostgreSQL dialect, the archive's `readings` with its `date` partition);
for chDB (ClickHouse's dialect) `extract(epoch FROM timestamp)` becomes `toUnixTimestamp64Micro(timestamp) / 1e6`
and the table is the files themselves, partitioned by their `date=` directories.
"""

import sys
import time


def duckdb_runner(archive):
    import duckdb

    con = duckdb.connect()
    con.sql(
        f"CREATE VIEW readings AS SELECT * FROM read_parquet('{archive}/readings/**/*.parquet', hive_partitioning=true)"
    )
    return lambda q: con.sql(q).fetchall()


def chdb_runner(archive):
    from chdb import session

    s = session.Session()
    s.query("SET use_hive_partitioning = 1")
    files = f"file('{archive}/readings/**/*.parquet', Parquet)"

    def run(q):
        q = q.replace("extract(epoch FROM timestamp)", "(toUnixTimestamp64Micro(timestamp) / 1e6)")
        q = q.replace("FROM readings", f"FROM {files}")
        return s.query(q, "CSV").bytes()

    return run


def datafusion_runner(archive):
    from datafusion import SessionContext

    ctx = SessionContext()
    ctx.register_parquet(
        "readings", f"{archive}/readings/", table_partition_cols=[("date", "string")], file_extension=".parquet"
    )
    return lambda q: ctx.sql(q).collect()


RUNNERS = {"duckdb": duckdb_runner, "chdb": chdb_runner, "datafusion-python": datafusion_runner}


def main():
    engine, archive, query = sys.argv[1:4]
    run = RUNNERS[engine](archive)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run(query)
        best = min(best, (time.perf_counter() - start) * 1e3)
    print(f"{best:.2f}")


if __name__ == "__main__":
    main()
