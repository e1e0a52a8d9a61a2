// The MCAP TypeScript reader (`McapIndexedReader` of `@mcap/core`) over a readable that reads
// a URL the way the browser viewers' own HTTP readers do (Foxglove's and Lichtblick's
// `BrowserHttpReader`): a GET without Range whose response is abandoned right after its
// headers, to learn the size (Content-Length) and that ranges work (Accept-Ranges: bytes),
// then one ranged GET per `read(offset, length)`, expecting 206 and the Content-Range asked
// for. Every request is recorded with the body bytes actually received, so a test can tell
// how much of the file a viewer transfers to show a window of it.
//
// Bundled by `npm run build` into `dist/mcap-viewer.js` (one IIFE script), which the
// end-to-end test `tests/tests/e2e/viewer_mcap.rs` serves to a headless Chromium. The page
// gets `window.milepostViewer` and `window.milepostReadWindow`; times cross the page
// boundary as decimal strings of nanoseconds (they do not fit in a JSON number).

import { McapIndexedReader } from "@mcap/core";

/** A `read`able over `url` through HTTP ranges, recording each request. */
export class HttpRangeReadable {
  constructor(url) {
    this.url = url;
    this.requests = [];
    this.fileSize = undefined;
  }

  /** The body bytes received by every request so far. */
  get bytesTransferred() {
    return this.requests.reduce((sum, r) => sum + r.bytes, 0);
  }

  /**
   * The viewers' probe: a plain GET (a HEAD may not be allowed by a presigned URL), abandoned
   * as soon as its headers are in, none of its body read.
   */
  async open() {
    const controller = new AbortController();
    const response = await fetch(this.url, {
      signal: controller.signal,
      cache: "no-store",
    });
    controller.abort();
    const record = {
      range: null,
      status: response.status,
      bytes: 0,
      contentLength: response.headers.get("content-length"),
      acceptRanges: response.headers.get("accept-ranges"),
      aborted: true,
    };
    this.requests.push(record);
    if (!response.ok) {
      throw new Error(`GET ${this.url}: status ${response.status}`);
    }
    if (record.acceptRanges !== "bytes") {
      throw new Error(`GET ${this.url}: no Accept-Ranges: bytes (${record.acceptRanges})`);
    }
    const size = Number(record.contentLength);
    if (record.contentLength == null || !Number.isSafeInteger(size) || size <= 0) {
      throw new Error(`GET ${this.url}: no usable Content-Length (${record.contentLength})`);
    }
    this.fileSize = size;
    return record;
  }

  async size() {
    if (this.fileSize === undefined) {
      await this.open();
    }
    return BigInt(this.fileSize);
  }

  async read(offset, length) {
    const start = Number(offset);
    const count = Number(length);
    if (count === 0) {
      return new Uint8Array(0);
    }
    const end = start + count - 1;
    if (this.fileSize !== undefined && end >= this.fileSize) {
      throw new Error(`read past the end: ${start}+${count} of ${this.fileSize}`);
    }
    const range = `bytes=${start}-${end}`;
    const response = await fetch(this.url, {
      headers: { Range: range },
      cache: "no-store",
    });
    const record = {
      range,
      status: response.status,
      bytes: 0,
      contentRange: response.headers.get("content-range"),
    };
    this.requests.push(record);
    // Count what arrives, chunk by chunk, whatever the status.
    const reader = response.body.getReader();
    const chunks = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      record.bytes += value.byteLength;
      chunks.push(value);
    }
    if (response.status !== 206) {
      throw new Error(`GET ${range}: status ${response.status}, not 206`);
    }
    const expected = `bytes ${start}-${end}/${this.fileSize}`;
    if (record.contentRange !== expected) {
      throw new Error(`GET ${range}: Content-Range ${record.contentRange}, not ${expected}`);
    }
    if (record.bytes !== count) {
      throw new Error(`GET ${range}: ${record.bytes} bytes, not ${count}`);
    }
    const out = new Uint8Array(count);
    let at = 0;
    for (const chunk of chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }
}

/** What the reader found in the summary section. */
function describeSummary(reader) {
  const channels = [...reader.channelsById.values()].map((c) => ({
    id: c.id,
    topic: c.topic,
    schemaId: c.schemaId,
    messageEncoding: c.messageEncoding,
  }));
  const stats = reader.statistics;
  const channelMessageCounts = {};
  if (stats) {
    for (const [id, count] of stats.channelMessageCounts) {
      const channel = reader.channelsById.get(id);
      channelMessageCounts[channel ? channel.topic : String(id)] = String(count);
    }
  }
  return {
    profile: reader.header.profile,
    library: reader.header.library,
    channels,
    schemas: reader.schemasById.size,
    chunkIndexes: reader.chunkIndexes.length,
    compressions: [...new Set(reader.chunkIndexes.map((c) => c.compression))],
    messageCount: stats ? String(stats.messageCount) : null,
    messageStartTime: stats ? String(stats.messageStartTime) : null,
    messageEndTime: stats ? String(stats.messageEndTime) : null,
    channelMessageCounts,
  };
}

/** The messages of `[startNs, endNs]` (inclusive, as `readMessages` takes it), counted. */
async function readMessages(reader, startNs, endNs) {
  const startTime = BigInt(startNs);
  const endTime = BigInt(endNs);
  const perTopic = {};
  let messages = 0;
  let payloadBytes = 0;
  let outOfWindow = 0;
  let outOfOrder = 0;
  let first = null;
  let last = null;
  for await (const message of reader.readMessages({ startTime, endTime })) {
    const topic = reader.channelsById.get(message.channelId)?.topic ?? String(message.channelId);
    perTopic[topic] = (perTopic[topic] ?? 0) + 1;
    messages += 1;
    payloadBytes += message.data.byteLength;
    if (message.logTime < startTime || message.logTime > endTime) outOfWindow += 1;
    if (last !== null && message.logTime < last) outOfOrder += 1;
    if (first === null) first = message.logTime;
    last = message.logTime;
  }
  return {
    messages,
    perTopic,
    payloadBytes,
    outOfWindow,
    outOfOrder,
    firstLogTime: first === null ? null : String(first),
    lastLogTime: last === null ? null : String(last),
  };
}

function requestsSince(readable, from) {
  return readable.requests.slice(from).map((r) => ({ ...r }));
}

/**
 * Step by step, so that a test can look at the server between the steps: `open(url)` probes
 * the URL, `readWindow(startNs, endNs)` reads the summary and then the window's messages.
 */
const viewer = {
  readable: null,

  async open(url) {
    this.readable = new HttpRangeReadable(url);
    const probe = await this.readable.open();
    return { size: this.readable.fileSize, probe: { ...probe } };
  },

  async readWindow(startNs, endNs) {
    const readable = this.readable;
    if (!readable) throw new Error("open(url) first");
    const from = readable.requests.length;
    const reader = await McapIndexedReader.Initialize({ readable, decompressHandlers: {} });
    const summaryRequests = readable.requests.length - from;
    const summary = describeSummary(reader);
    const window = await readMessages(reader, startNs, endNs);
    const requests = requestsSince(readable, from);
    return {
      size: readable.fileSize,
      summary,
      summaryRequests,
      requests,
      bytesTransferred: requests.reduce((sum, r) => sum + r.bytes, 0),
      ...window,
    };
  },

  /** The status and body of a plain GET of `url` (a refused URL's 403, say). */
  async status(url) {
    const response = await fetch(url, { cache: "no-store" });
    return { status: response.status, body: await response.text() };
  },
};

/** All in one: the probe, the summary and the window; every request of them listed. */
async function milepostReadWindow(url, startNs, endNs) {
  const opened = await viewer.open(url);
  const read = await viewer.readWindow(startNs, endNs);
  const requests = [opened.probe, ...read.requests];
  return {
    ...read,
    requests,
    bytesTransferred: requests.reduce((sum, r) => sum + r.bytes, 0),
  };
}

globalThis.milepostViewer = viewer;
globalThis.milepostReadWindow = milepostReadWindow;
