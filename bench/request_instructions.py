"""Machine instructions per request on the responder's request path (valgrind), against a
raw nats-py responder measured the same way: the load-independent figure for comparing
versions of the request path on a busy machine (CPU time moves with the load; instruction
counts barely do).

The responder side of ``bench/request_path.py`` (requests fed straight into the
connection's parser in chunks of 50, replies to a real nats-server) runs under
``valgrind --tool=callgrind`` twice, once feeding 200 and once 1200 requests after the same
warm-up and with the same frames built; the difference divided by 1000 is the
instructions one request costs, start-up and imports cancelled out. ``PYTHONHASHSEED`` is
fixed so that both runs hash alike. About 2 minutes per side (valgrind runs ~50x slower).
Not quite load-free: a run under valgrind lasts minutes, and how many timed sweeps (the
dedup's expiry) fall inside it moves with the load; the same tree gave counts up to ~1k
apart. Compare versions measured side by side, alternately.

Usage::

    python bench/request_instructions.py            # needs valgrind on PATH
    PYTHONPATH=/path/to/other/checkout python bench/request_instructions.py   # another version
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_info, nats_server, raw_echo_responder

WARM = 300
MOST = 1200
FEW = 200


async def _sdk(url: str, n: int) -> None:
    import request_path as rp

    from natsagents import Mesh
    from natsagents.wire.subjects import agent_subject

    async with Mesh.connect(url, prefix=rp.PREFIX, name="bench-instructions") as mesh:
        await mesh.host(rp.Echo)
        assert await mesh.ref("Echo/e-1").call("echo", payload=rp.PAYLOAD) == rp.PAYLOAD
        act = mesh._host.activations[("Echo", "e-1")]
        assert act.subscription is not None
        sub = act.subscription._sub
        nc, sid = sub._conn, sub._id
        subject = agent_subject(rp.PREFIX, "Echo", "e-1")

        async def feed(frames: list[bytes]) -> None:
            for k in range(0, len(frames), rp.CHUNK):
                await nc._ps.parse(b"".join(frames[k : k + rp.CHUNK]))
                await act.wait_idle()

        await feed(rp.sdk_frames(sid, subject, 0, WARM))
        frames = rp.sdk_frames(sid, subject, WARM, MOST)  # always all built: only feeding differs
        await feed(frames[:n])


async def _raw(url: str, n: int) -> None:
    import nats
    import request_path as rp

    nc = await nats.connect(url, name="bench-instructions-raw")
    sub, feed = await raw_echo_responder(nc, rp.RAW_SUBJECT, rp.CHUNK)
    try:
        await feed(rp.raw_frames(sub._id, 0, WARM))
        frames = rp.raw_frames(sub._id, WARM, MOST)
        await feed(frames[:n])
    finally:
        await nc.drain()


def _child(side: str, n: int, url: str) -> None:
    asyncio.run((_sdk if side == "sdk" else _raw)(url, n))


def _instructions(side: str, n: int, url: str) -> int:
    """Instructions of one child run under callgrind."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--n",
        str(n),
        "--url",
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", choices=("sdk", "raw"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.child:
        _child(cfg.child, cfg.n, cfg.url)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH (apt-get install valgrind)", file=sys.stderr)
        return 2
    per: dict[str, float] = {}
    with nats_server(None) as (url, _):
        for side in ("raw", "sdk"):
            few, most = _instructions(side, FEW, url), _instructions(side, MOST, url)
            per[side] = (most - few) / (MOST - FEW)
    rows = [["instructions per request", f"{per['raw']:,.0f}", f"{per['sdk']:,.0f}", f"{per['sdk'] / per['raw']:.2f}"]]
    print(format_table(["", "raw nats-py", "natsagents", "sdk/raw"], rows))
    import natsagents

    summary = {
        "bench": "request_instructions",
        "sdk_instructions_per_request": round(per["sdk"]),
        "raw_instructions_per_request": round(per["raw"]),
        "ratio_instructions": round(per["sdk"] / per["raw"], 3),
        "natsagents": str(Path(natsagents.__file__).resolve().parent),
        "machine": machine_info(),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
