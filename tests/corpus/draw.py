"""How the sample in this folder was drawn from the full corpora (see NOTICE.md):

    python tests/corpus/draw.py DATA_DIR     # DATA_DIR: where fingpt-data download wrote them

MAEC: every call of the 8 companies with the most calls (ties by ticker), so each company has a
series of calls over time. Earnings-21/22: the 6 shortest calls of each. Rows keep their order.
"""

import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).parent


def main(data_dir: Path) -> None:
    maec = pq.read_table(data_dir / "maec" / "calls.parquet")
    counts = Counter(maec["symbol"].to_pylist())
    companies = sorted(counts, key=lambda s: (-counts[s], s))[:8]
    maec = maec.filter(pc.is_in(maec["symbol"], value_set=pa.array(companies)))

    earnings = pq.read_table(data_dir / "earnings21_22" / "calls.parquet")
    keep = set()
    for source in ("earnings21", "earnings22"):
        rows = [r for r in earnings.to_pylist() if r["source"] == source]
        keep |= {
            r["call_id"] for r in sorted(rows, key=lambda r: (len(r["content"].encode()), r["call_id"]))[:6]
        }
    earnings = earnings.filter(pc.is_in(earnings["call_id"], value_set=pa.array(sorted(keep))))

    for name, table in (("maec", maec), ("earnings21_22", earnings)):
        (HERE / name).mkdir(exist_ok=True)
        pq.write_table(table, HERE / name / "calls.parquet", compression="zstd", compression_level=19)
        print(name, table.num_rows, "calls", (HERE / name / "calls.parquet").stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
