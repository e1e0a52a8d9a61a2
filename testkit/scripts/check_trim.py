#!/usr/bin/env python3
"""Checks a trimmed MCAP file against its source with the official `mcap` Python reader
(an implementation independent of the Rust writer that produced the file).

Usage: check_trim.py SOURCE TRIMMED START_NS END_NS TOPICS_JSON

- the trimmed file opens and its messages are exactly the source's messages with log time in
  [START_NS, END_NS] on TOPICS (a JSON list; [] means all): same count, same bytes, same
  (topic, log time, publish time, sequence) for each;
- its summary statistics agree with its messages: message count, first and last log time,
  per-channel counts; its chunk indexes cover every message.

Prints a JSON report on stdout; exits 1 (with the reason on stderr) when a check fails.
"""

import hashlib
import json
import sys
from collections import Counter

from mcap.reader import make_reader


def messages(path, start, end, topics):
    out = []
    with open(path, "rb") as f:
        reader = make_reader(f)
        for _schema, channel, message in reader.iter_messages(log_time_order=False):
            if topics and channel.topic not in topics:
                continue
            if not (start <= message.log_time <= end):
                continue
            out.append(
                (
                    channel.topic,
                    message.log_time,
                    message.publish_time,
                    message.sequence,
                    hashlib.sha256(message.data).hexdigest(),
                    len(message.data),
                )
            )
    return sorted(out)


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


def main():
    source, trimmed, start, end, topics = sys.argv[1:6]
    start, end, topics = int(start), int(end), set(json.loads(topics))

    want = messages(source, start, end, topics)
    got = messages(trimmed, 0, 2**64 - 1, set())
    if len(got) != len(want):
        fail(f"trimmed file has {len(got)} messages, the source has {len(want)} in the window")
    if got != want:
        diff = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        fail(f"message {diff} differs: trimmed {got[diff]}, source {want[diff]}")
    got_bytes = sum(m[5] for m in got)
    want_bytes = sum(m[5] for m in want)
    if got_bytes != want_bytes:
        fail(f"trimmed messages hold {got_bytes} bytes, the source's {want_bytes}")

    with open(trimmed, "rb") as f:
        summary = make_reader(f).get_summary()
    if summary is None or summary.statistics is None:
        fail("the trimmed file has no summary statistics")
    stats = summary.statistics
    if stats.message_count != len(got):
        fail(f"statistics say {stats.message_count} messages, the file holds {len(got)}")
    if got:
        times = [m[1] for m in got]
        if stats.message_start_time != min(times) or stats.message_end_time != max(times):
            fail(
                f"statistics span {stats.message_start_time}..{stats.message_end_time}, "
                f"messages span {min(times)}..{max(times)}"
            )
    by_topic = Counter(m[0] for m in got)
    per_channel = {
        summary.channels[cid].topic: n for cid, n in stats.channel_message_counts.items() if n
    }
    if per_channel != dict(by_topic):
        fail(f"statistics count per topic {per_channel}, messages {dict(by_topic)}")
    if got and not summary.chunk_indexes:
        fail("the trimmed file has messages but no chunk index")
    for c in summary.chunk_indexes:
        if c.message_start_time < start or c.message_end_time > end:
            fail(f"chunk index spans {c.message_start_time}..{c.message_end_time}, outside the window")

    print(
        json.dumps(
            {
                "messages": len(got),
                "bytes": got_bytes,
                "topics": dict(by_topic),
                "chunks": len(summary.chunk_indexes),
                "compression": sorted({c.compression for c in summary.chunk_indexes}),
                "statistics": {
                    "message_count": stats.message_count,
                    "message_start_time": stats.message_start_time,
                    "message_end_time": stats.message_end_time,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
