// The microphone page: capture through pcm-worklet.js (16 kHz pcm_s16le), stream it to /transcribe/stream (the
// README's "Streaming protocol"), show the open partial in grey and each final in black with its times.
// DOM contract: #start, #stop, #partial, #transcript (finals as .final), #status; ?autostart=1, ?access_token=.

const RATE = 16000;
const FRAME = RATE / 10;  // samples per WebSocket frame: 100 ms
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let session = null;  // the running session, if any: {ws, ctx, stream, pending, count, eof, error, failed}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function streamUrl(key) {  // relative to this page, so it works behind a path prefix too
  const url = new URL("transcribe/stream", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = key ? new URLSearchParams({ access_token: key }).toString() : "";  // browsers cannot set headers
  url.hash = "";
  return url.href;
}

function connect(s) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(streamUrl($("key").value.trim()));
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "config", sample_rate: RATE, encoding: "pcm_s16le" }));
      resolve(ws);
    };
    ws.onmessage = (event) => show(JSON.parse(event.data), s);
    ws.onclose = (event) => {
      closed(s, event);
      reject(new Error("closed"));
    };
  });
}

function show(message, s) {
  if (message.type === "partial") {
    $("partial").textContent = message.text;
    $("partial").dataset.segment = message.segment;
  } else if (message.type === "final") {
    if (Number($("partial").dataset.segment) <= message.segment) $("partial").textContent = "";
    if (!message.text) return;  // a segment with nothing to show
    // One element per segment: a later final for the same segment (a revision) replaces the text.
    let line = $("transcript").querySelector(`.final[data-segment="${message.segment}"]`);
    if (!line) {
      line = document.createElement("p");
      line.className = "final";
      line.dataset.segment = message.segment;
      $("transcript").append(line);
    }
    line.dataset.start = message.start.toFixed(2);
    line.dataset.end = message.end.toFixed(2);
    line.textContent = message.text;
  } else if (message.type === "error") {
    s.error = message.message;  // the close that follows says what kind
  }
}

function closed(s, event) {
  release(s);
  if (session === s) session = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("partial").textContent = "";
  const why = s.error || event.reason || "no reason given";
  if (s.failed) setStatus("error", s.failed);
  else if (event.code === 1000) setStatus("closed", "closed");
  else if (event.code === 1013) setStatus("busy", `server busy: ${why} (${event.code})`);
  else if (event.code === 1008 && /key/i.test(why)) {
    setStatus("auth", `not authorised: ${why} (${event.code}). Enter the API key and press Start.`);
    $("key").focus();
  } else if (event.code === 1006) setStatus("error", "could not reach the server, or the connection dropped (1006)");
  else setStatus("error", `closed: ${why} (${event.code})`);
}

function release(s) {  // the microphone off
  if (s.stream) s.stream.getTracks().forEach((track) => track.stop());
  if (s.ctx) s.ctx.close();
  s.stream = s.ctx = null;
}

function send(s, samples) {  // blocks from the worklet, sent in frames of FRAME samples
  if (s.eof) return;
  s.pending.push(samples);
  s.count += samples.length;
  if (s.count >= FRAME) flush(s);
}

function flush(s) {
  if (!s.count) return;
  const frame = new Int16Array(s.count);
  let at = 0;
  for (const block of s.pending) {
    frame.set(block, at);
    at += block.length;
  }
  s.pending = [];
  s.count = 0;
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(frame.buffer);
}

async function start() {
  if (session) return;
  const s = (session = { pending: [], count: 0, eof: false });
  $("start").disabled = true;
  $("stop").disabled = false;
  $("transcript").replaceChildren();
  setStatus("connecting", "connecting…");
  try {
    s.ws = await connect(s);
    if (s.eof) return s.ws.send(JSON.stringify({ type: "eof" }));  // stopped while connecting
    s.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    s.ctx = new AudioContext();
    await s.ctx.audioWorklet.addModule("static/pcm-worklet.js");
    if (session !== s || s.eof) return release(s);  // closed or stopped meanwhile
    const node = new AudioWorkletNode(s.ctx, "pcm16k", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { rate: RATE },
    });
    node.port.onmessage = (event) => send(s, event.data);
    s.ctx.createMediaStreamSource(s.stream).connect(node);
    if (s.ctx.state !== "running") {  // the browser wants a click before audio runs
      setStatus("blocked", "the browser holds audio until you click this page");
      document.addEventListener("click", () => s.ctx && s.ctx.resume(), { once: true });
      await s.ctx.resume();
    }
    if (session === s && !s.eof) setStatus("listening", `listening (${s.ctx.sampleRate} Hz, sent as 16 kHz)`);
  } catch (err) {
    if (session !== s || s.eof) return;  // the close said, or will say, how it ended
    s.failed = `${err.name || "error"}: ${err.message}`;  // e.g. NotAllowedError: no microphone permission
    release(s);
    if (s.ws) s.ws.close();  // closed() shows s.failed
    else closed(s, { code: 0, reason: "" });
  }
}

function stop() {
  const s = session;
  if (!s || s.eof) return;
  release(s);
  flush(s);
  s.eof = true;
  $("stop").disabled = true;
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "eof" }));
  setStatus("stopping", "stopping: waiting for the last words…");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("key").value = params.get("access_token") || "";
if (params.get("autostart") === "1") start();
