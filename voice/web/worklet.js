/*
 * AudioWorklet processors of the voice widget (load with audioContext.audioWorklet.addModule(url)).
 *
 * "mic-capture": the microphone at the AudioContext rate (44.1 or 48 kHz) -> low-pass + resample to 24 kHz
 *   -> PCM16 little-endian mono frames of 20 ms (480 samples, 960 bytes), posted to the main thread as
 *   transferable ArrayBuffers (which sends them as binary WebSocket messages). Also posts the input level.
 *
 * "agent-playback": the agent's 24 kHz audio, queued per item, resampled to the context rate. A short
 *   jitter buffer (60 ms) absorbs network jitter; on {type:"clear"} everything queued is dropped at once.
 *   It reports how many ms of each item were really played ({type:"played"}, every ~50 ms while playing,
 *   on item change and right after a clear), which the page forwards as {"type":"playback"} so that the
 *   server truncates the agent's turn exactly where the caller stopped hearing it.
 */
'use strict';

const WIRE_RATE = 24000;
const FRAME_SAMPLES = 480; // 20 ms at 24 kHz
const PREBUFFER_SAMPLES = 1440; // 60 ms at 24 kHz
const PREBUFFER_WAIT_S = 0.06;
const REPORT_EVERY_S = 0.05;

/** Windowed-sinc low-pass FIR taps (Hamming), cutoff in cycles per input sample (< 0.5). */
function lowPass(cutoff, taps) {
  const h = new Float32Array(taps);
  const m = (taps - 1) / 2;
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const x = n - m;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.54 - 0.46 * Math.cos((2 * Math.PI * n) / (taps - 1));
    h[n] = sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= sum;
  return h;
}

class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / WIRE_RATE; // input samples per output sample
    const downsampling = this.step > 1.0001;
    this.taps = downsampling ? lowPass((0.45 * WIRE_RATE) / sampleRate, 31) : new Float32Array([1]);
    this.history = new Float32Array(this.taps.length);
    this.hpos = 0;
    this.inputIndex = -1; // absolute index of the last filtered input sample
    this.prev = 0; // last filtered input sample
    this.next = 0; // position (in input samples) of the next output sample
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.muted = false;
    this.levelSum = 0;
    this.levelCount = 0;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === 'mute') this.muted = !!event.data.value;
    };
  }

  filter(x) {
    const taps = this.taps;
    const n = taps.length;
    this.history[this.hpos] = x;
    let acc = 0;
    let j = this.hpos;
    for (let k = 0; k < n; k++) {
      acc += taps[k] * this.history[j];
      j = j === 0 ? n - 1 : j - 1;
    }
    this.hpos = this.hpos + 1 === n ? 0 : this.hpos + 1;
    return acc;
  }

  emit(sample) {
    const s = this.muted ? 0 : Math.max(-1, Math.min(1, sample));
    this.frame[this.fill++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
    this.levelSum += s * s;
    this.levelCount++;
    if (this.fill === FRAME_SAMPLES) {
      const out = this.frame.buffer;
      this.port.postMessage({ type: 'frame', pcm: out }, [out]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.fill = 0;
      if (this.levelCount >= WIRE_RATE / 10) {
        this.port.postMessage({ type: 'level', rms: Math.sqrt(this.levelSum / this.levelCount) });
        this.levelSum = 0;
        this.levelCount = 0;
      }
    }
  }

  process(inputs, outputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const a = input[0];
      const b = input.length > 1 ? input[1] : null;
      for (let i = 0; i < a.length; i++) {
        const y = this.filter(b ? 0.5 * (a[i] + b[i]) : a[i]);
        this.inputIndex++;
        // Output samples that fall between the previous and this input sample (linear interpolation).
        while (this.next <= this.inputIndex) {
          const frac = this.next - (this.inputIndex - 1);
          this.emit(this.prev + (y - this.prev) * frac);
          this.next += this.step;
        }
        this.prev = y;
      }
    }
    const output = outputs[0];
    if (output) for (const channel of output) channel.fill(0);
    return true;
  }
}

class AgentPlayback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = WIRE_RATE / sampleRate; // wire samples per output sample
    this.queue = []; // {item, data: Float32Array}
    this.queued = 0; // wire samples queued (not yet started)
    this.pos = 0; // fractional read position in queue[0].data
    this.playing = false;
    this.waitSince = -1;
    this.item = null; // item whose audio was played last
    this.played = new Map(); // item -> wire samples played
    this.lastReport = 0;
    this.dirty = false;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (!msg) return;
    if (msg.type === 'audio') {
      if (msg.samples.length === 0) return;
      this.queue.push({ item: msg.item, data: msg.samples });
      this.queued += msg.samples.length;
      if (this.waitSince < 0) this.waitSince = currentTime;
    } else if (msg.type === 'clear') {
      this.queue = [];
      this.queued = 0;
      this.pos = 0;
      this.playing = false;
      this.waitSince = -1;
      this.report(true);
    }
  }

  report(cleared) {
    if (this.item === null) {
      if (cleared) this.port.postMessage({ type: 'cleared', item: null, playedMs: 0 });
      return;
    }
    const samples = this.played.get(this.item) || 0;
    this.port.postMessage({
      type: cleared ? 'cleared' : 'played',
      item: this.item,
      playedMs: Math.floor(samples / (WIRE_RATE / 1000)),
    });
    this.lastReport = currentTime;
    this.dirty = false;
  }

  process(inputs, outputs) {
    const output = outputs[0];
    const out = output[0];
    if (!this.playing && this.queue.length > 0) {
      if (this.queued >= PREBUFFER_SAMPLES || currentTime - this.waitSince >= PREBUFFER_WAIT_S) {
        this.playing = true;
      }
    }
    for (let i = 0; i < out.length; i++) {
      if (!this.playing || this.queue.length === 0) {
        out[i] = 0;
        continue;
      }
      const head = this.queue[0];
      if (head.item !== this.item) {
        if (this.item !== null && this.dirty) this.report(false);
        this.item = head.item;
        if (!this.played.has(this.item)) this.played.set(this.item, 0);
      }
      const k = Math.floor(this.pos);
      const a = head.data[k];
      let b = a;
      if (k + 1 < head.data.length) b = head.data[k + 1];
      else if (this.queue.length > 1 && this.queue[1].item === head.item) b = this.queue[1].data[0];
      out[i] = a + (b - a) * (this.pos - k);
      const before = Math.floor(this.pos);
      this.pos += this.step;
      const consumed = Math.floor(this.pos) - before;
      if (consumed > 0) {
        this.played.set(this.item, this.played.get(this.item) + consumed);
        this.queued -= consumed;
        this.dirty = true;
      }
      if (this.pos >= head.data.length) {
        this.pos -= head.data.length;
        this.queue.shift();
        if (this.queue.length === 0) {
          // Underrun: wait for the jitter buffer to refill before playing again.
          this.playing = false;
          this.pos = 0;
          this.queued = 0;
          this.waitSince = -1;
        }
      }
    }
    for (let c = 1; c < output.length; c++) output[c].set(out);
    if (this.dirty && currentTime - this.lastReport >= REPORT_EVERY_S) this.report(false);
    if (this.played.size > 64) {
      for (const key of this.played.keys()) {
        if (key !== this.item && this.played.size > 32) this.played.delete(key);
      }
    }
    return true;
  }
}

registerProcessor('mic-capture', MicCapture);
registerProcessor('agent-playback', AgentPlayback);
