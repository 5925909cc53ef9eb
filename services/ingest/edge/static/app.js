// The browser microphone client. Microphone -> AudioWorklet (16-bit PCM, 20 ms frames)
// -> binary WebSocket frames to this page's host; server events -> the transcript.
// Wire protocol: see "Our protocol" in docs/protocols.md.

const RATES = [8000, 16000, 32000, 48000]; // the sample rates the server accepts
const FALLBACK_RATE = 48000;

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  stop: $("stop"),
  picker: $("model-picker"),
  model: $("model"),
  status: $("status"),
  message: $("message"),
  transcript: $("transcript"),
};

let served = { models: [], default: "" };
let session = null;

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function say(text) {
  ui.message.textContent = ui.message.textContent ? `${ui.message.textContent}\n${text}` : text;
}

async function loadModels() {
  try {
    const reply = await fetch("models", { cache: "no-store" });
    if (!reply.ok) return;
    served = await reply.json();
  } catch {
    return; // without the list, the server's default model applies
  }
  if (served.models.length === 0) say("No transcriber is running right now; Start will fail until one is.");
  if (served.models.length < 2) return;
  for (const name of served.models) {
    ui.model.append(new Option(name, name, false, name === served.default));
  }
  ui.picker.hidden = false;
}

function chosenModel() {
  if (!ui.picker.hidden) return ui.model.value;
  return served.models.length === 1 ? served.models[0] : ""; // "": the server's default
}

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("The microphone is not available here: open this page over HTTPS or from localhost.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new Error("Microphone access was refused. Allow it in the browser's site settings, then press Start again.");
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      throw new Error("No microphone was found. Connect one, then press Start again.");
    }
    if (err.name === "NotReadableError") {
      throw new Error("The microphone could not be opened; another application may be using it.");
    }
    throw new Error(`The microphone could not be opened: ${err.name}: ${err.message}`);
  }
}

// An AudioContext whose rate the server accepts, so the declared sample_rate is always true.
async function audioContext() {
  let ctx = new AudioContext();
  if (!RATES.includes(ctx.sampleRate)) {
    await ctx.close();
    ctx = new AudioContext({ sampleRate: FALLBACK_RATE });
  }
  await ctx.resume();
  return ctx;
}

async function start() {
  ui.start.disabled = true;
  ui.model.disabled = true;
  ui.message.textContent = "";
  setStatus("connecting", "Opening the microphone…");
  const s = { ws: null, ctx: null, stream: null, ready: false, done: false, stopping: false, lines: new Map() };
  session = s;
  try {
    s.stream = await openMicrophone();
    s.ctx = await audioContext();
    await s.ctx.audioWorklet.addModule("pcm-worklet.js");
    const node = new AudioWorkletNode(s.ctx, "pcm-encoder", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
    });
    s.ctx.createMediaStreamSource(s.stream).connect(node);
    node.port.onmessage = (e) => {
      if (s.ready && !s.stopping && s.ws.readyState === WebSocket.OPEN) s.ws.send(e.data);
    };
  } catch (err) {
    release(s);
    finish(s, "error", "Stopped.");
    say(err.message);
    return;
  }
  const url = new URL(".", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ sample_rate: s.ctx.sampleRate });
  url.searchParams.set("partials", "1"); // shown in grey until the final replaces them
  if (chosenModel()) url.searchParams.set("model", chosenModel());
  const token = new URLSearchParams(location.search).get("token"); // servers run with --api-keys
  if (token) url.searchParams.set("token", token);
  setStatus("connecting", `Connecting to ${url.host}…`);
  s.ws = new WebSocket(url);
  s.ws.binaryType = "arraybuffer";
  s.ws.onmessage = (e) => onEvent(s, JSON.parse(e.data));
  s.ws.onclose = (e) => onClose(s, e);
  ui.stop.disabled = false;
}

function stop() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  ui.stop.disabled = true;
  release(s);
  if (s.ready && s.ws.readyState === WebSocket.OPEN) {
    s.ws.send(JSON.stringify({ type: "eof" }));
    setStatus("finishing", "Finishing: waiting for the last results…");
  } else {
    s.ws.close(1000);
  }
}

// Stop the microphone (its tracks, so the browser's recording indicator goes off) and the audio graph.
function release(s) {
  s.stream?.getTracks().forEach((track) => track.stop());
  if (s.ctx && s.ctx.state !== "closed") s.ctx.close();
}

function finish(s, state, text) {
  setStatus(state, text);
  if (session === s) session = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.model.disabled = false;
}

function onEvent(s, event) {
  switch (event.type) {
    case "ready":
      s.ready = true;
      setStatus("listening", `Listening (${event.model}, ${event.sample_rate} Hz). Press Stop when you are done.`);
      break;
    case "partial":
    case "final":
      showLine(s, event);
      break;
    case "error":
      say(`${event.segment != null ? `Segment ${event.segment}: ` : ""}${event.code}: ${event.message}`);
      break;
    case "done":
      s.done = true;
      finish(s, "done", "Done.");
      s.ws.close(1000);
      break;
  }
}

// One line per segment: a partial shows in place, in grey italics, until its final replaces it.
function showLine(s, event) {
  let li = s.lines.get(event.segment);
  if (!li) {
    li = document.createElement("li");
    li.append(Object.assign(document.createElement("span"), { className: "text" }));
    li.append(Object.assign(document.createElement("span"), { className: "latency" }));
    s.lines.set(event.segment, li);
    ui.transcript.append(li);
  }
  if (li.className === "final" && event.type === "partial") return; // a late partial never undoes a final
  li.className = event.type;
  li.dataset.testid = event.type;
  li.dataset.segment = event.segment;
  li.querySelector(".text").textContent = event.text;
  const latency = li.querySelector(".latency");
  if (event.type === "final" && typeof event.latency === "number") {
    latency.textContent = `${event.latency.toFixed(2)} s`;
    latency.title = "latency: end of speech to transcript";
  }
  li.scrollIntoView({ block: "nearest" });
}

function onClose(s, e) {
  release(s);
  if (s.done) return;
  if (s.stopping && !s.ready) {
    finish(s, "idle", "Stopped.");
    return;
  }
  const reason = e.reason ? ` ${e.reason}` : "";
  if (!s.ready && e.code === 1006) {
    say("Could not connect (close code 1006): the server is down or full, or wants an API key (open /?token=KEY).");
  } else if (e.code === 1006) {
    say("The connection was lost (close code 1006).");
  } else {
    say(`The connection was closed: ${e.code}${reason}`);
  }
  finish(s, "closed", "Disconnected.");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
loadModels();
