/*
 * The voice widget: a browser client of the service (bridges/browser/PROTOCOL.md) and an embeddable "Talk"
 * button. Two transports carry the same JSON control messages:
 *   - WebRTC (default where it connects): the microphone track (echo cancellation on) and the agent's voice
 *     as Opus media tracks, the JSON messages on a data channel labelled "control"; signalling is one HTTP
 *     request (GET /webrtc/config for the ICE servers, then POST /webrtc/offer with the complete offer).
 *   - WebSocket (/ws/browser): PCM16 24 kHz frames both ways from AudioWorklets, JSON as text messages.
 * With transport "auto" a WebRTC call that cannot be set up (no RTCPeerConnection, WebRTC off on the
 * service, no connectivity within a few seconds) falls back to the WebSocket; refusals that would refuse the
 * WebSocket too (token, origin, busy) do not.
 *
 * Embed on any page:
 *   <script src="https://VOICE-HOST/static/widget.js" data-agent="restaurant"
 *           data-token-url="/my-backend/voice-token"></script>
 * Attributes: data-agent (agent name), data-token (a caller token from POST /api/tokens) or data-token-url
 * (a URL on the embedding site that returns {"token": "..."}; fetched before each call), data-label (button
 * text, default "Talk"), data-transport ("auto" (default), "webrtc" or "websocket"), data-mount="none" (load
 * the library only: window.VoiceWidget.VoiceClient). The mounted widget's client is
 * window.VoiceWidget.instance.
 * On loopback in development mode no token is needed.
 *
 * VoiceClient (window.VoiceWidget.VoiceClient) is an EventTarget. Events (CustomEvent, detail = message):
 *   status {state: idle|connecting|live|ended|error, text}, started, transcript (transcript.delta/.done),
 *   cost, dtmf (dtmf.ack), tool, clear, error, ended (call.ended), transport {transport, fallback?, reason?}.
 */
(function () {
  'use strict';

  const script = document.currentScript;
  const STATIC_BASE = script ? new URL('./', script.src).href : new URL('/static/', location.href).href;
  const SERVER_BASE = new URL('../', STATIC_BASE).href;
  const WIRE_RATE = 24000;
  const TRANSPORTS = ['auto', 'webrtc', 'websocket'];
  const GATHER_TIMEOUT_MS = 3000;
  const CONNECT_TIMEOUT_MS = 10000;
  const FINAL_HTTP = [401, 403, 503];

  function httpUrl(base, path, agent, token) {
    const url = new URL(path, base);
    if (agent) url.searchParams.set('agent', agent);
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  /** An error of the WebRTC set-up; final: the WebSocket would be refused the same way (no fallback). */
  function setupError(code, message, final) {
    const err = new Error(message);
    err.code = code;
    err.final = !!final;
    return err;
  }

  /** Resolve when ICE gathering is complete (or after timeoutMs: the offer then carries what was found). */
  function gatheringDone(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      }
      function check() {
        if (pc.iceGatheringState === 'complete') done();
      }
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  /** Resolve when the peer connection is connected; reject when it fails or after timeoutMs. */
  function connected(pc, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(setupError('connect_timeout', 'WebRTC did not connect')), timeoutMs);
      function finish(err) {
        clearTimeout(timer);
        pc.removeEventListener('connectionstatechange', check);
        if (err) reject(err);
        else resolve();
      }
      function check() {
        const state = pc.connectionState;
        if (state === 'connected') finish(null);
        else if (state === 'failed' || state === 'closed') finish(setupError('connect_failed', 'WebRTC could not connect'));
      }
      pc.addEventListener('connectionstatechange', check);
      check();
    });
  }

  function wsUrl(base, agent, token) {
    const url = new URL('ws/browser', base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (agent) url.searchParams.set('agent', agent);
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  const CLOSE_TEXT = {
    1000: 'Call ended',
    1006: 'Connection lost',
    1008: 'Not allowed',
    1011: 'The service had a problem',
    1013: 'All lines are busy, please try again in a moment',
  };

  const END_TEXT = {
    caller_hangup: 'Call ended',
    agent_end_call: 'The agent ended the call',
    operator: 'Call ended by an operator',
    budget: 'Call ended: cost limit reached',
    upstream_failed: 'The assistant is unavailable, please try again later',
    shutdown: 'The service is restarting, please call again in a moment',
    transferred: 'Call transferred',
    error: 'The call failed',
  };

  class VoiceClient extends EventTarget {
    /**
     * @param {{server?: string, agent?: string, token?: string, tokenUrl?: string, transport?: string}} options
     *   transport: "auto" (WebRTC, else WebSocket), "webrtc" or "websocket".
     */
    constructor(options) {
      super();
      const opts = options || {};
      this.server = opts.server || SERVER_BASE;
      this.agent = opts.agent || '';
      this.token = opts.token || '';
      this.tokenUrl = opts.tokenUrl || '';
      this.transportChoice = TRANSPORTS.includes(opts.transport) ? opts.transport : 'auto';
      this.transport = null;
      this.state = 'idle';
      this.callId = null;
      this.ws = null;
      this.pc = null;
      this.dc = null;
      this.audioEl = null;
      this.ctx = null;
      this.stream = null;
      this.mic = null;
      this.player = null;
      this.analyser = null;
      this.micLevel = 0;
      this.currentItem = null;
      this.stats = { framesSent: 0, bytesReceived: 0, framesReceived: 0, reports: 0 };
      this.lastError = null;
      this.endReason = null;
      this._ended = false;
    }

    emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }

    setState(state, text) {
      this.state = state;
      this.emit('status', { state: state, text: text || '' });
    }

    async fetchToken() {
      if (this.token) return this.token;
      if (!this.tokenUrl) return '';
      const response = await fetch(this.tokenUrl, { method: 'POST', credentials: 'include' });
      if (!response.ok) throw new Error('could not get a call token (HTTP ' + response.status + ')');
      const body = await response.json();
      return body.token || '';
    }

    /** Start a call: microphone, audio graph, then WebRTC or the WebSocket (see transportChoice). */
    async start() {
      if (this.state === 'connecting' || this.state === 'live') return;
      this._ended = false;
      this._finished = false;
      this.callId = null;
      this.endReason = null;
      this.lastError = null;
      this.transport = null;
      this.setState('connecting', 'Connecting…');
      try {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        this.ctx = new Ctx({ latencyHint: 'interactive' });
        if (this.ctx.state === 'suspended') await this.ctx.resume();
        await this.ctx.audioWorklet.addModule(new URL('worklet.js', STATIC_BASE).href);
        this.stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
        });
        const source = this.ctx.createMediaStreamSource(this.stream);
        this.mic = new AudioWorkletNode(this.ctx, 'mic-capture', {
          numberOfInputs: 1,
          numberOfOutputs: 1,
          outputChannelCount: [1],
        });
        const sink = this.ctx.createGain();
        sink.gain.value = 0;
        source.connect(this.mic);
        this.mic.connect(sink);
        sink.connect(this.ctx.destination);
        this.analyser = this.ctx.createAnalyser();
        this.analyser.fftSize = 1024;
        this.mic.port.onmessage = (event) => this.onMicMessage(event.data);
        const token = await this.fetchToken();
        if (this.transportChoice !== 'websocket' && window.RTCPeerConnection) {
          try {
            await this.startWebRTC(token);
            return;
          } catch (err) {
            this.closePeer();
            if (this._ended || this.transportChoice === 'webrtc' || err.final) throw err;
            this.emit('transport', { transport: 'websocket', fallback: true, reason: err.message });
          }
        }
        this.startPlayer();
        this.transport = 'websocket';
        this.emit('transport', { transport: 'websocket' });
        this.openSocket(wsUrl(this.server, this.agent, token));
      } catch (err) {
        if (!this._finished && this.state !== 'error') {
          this.fail((err && err.code) || 'start_failed', err && err.message ? err.message : String(err));
        }
        this.teardown();
      }
    }

    /** The WebSocket transport's player: queued 24 kHz PCM, reporting its playback position. */
    startPlayer() {
      this.player = new AudioWorkletNode(this.ctx, 'agent-playback', {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
      });
      this.player.connect(this.analyser);
      this.analyser.connect(this.ctx.destination);
      this.player.port.onmessage = (event) => this.onPlayerMessage(event.data);
    }

    async fetchJson(url, init) {
      let response;
      try {
        response = await fetch(url, init);
      } catch (err) {
        throw setupError('network', 'Could not reach the voice service', false);
      }
      let body = {};
      try {
        body = await response.json();
      } catch (err) {
        body = {};
      }
      if (!response.ok) {
        const error = body.error || {};
        const final = FINAL_HTTP.includes(response.status) || error.code === 'unknown_agent';
        throw setupError(error.code || 'http_' + response.status, error.message || 'HTTP ' + response.status, final);
      }
      return body;
    }

    /** WebRTC: ICE servers, peer connection with the microphone and the control channel, offer, answer. */
    async startWebRTC(token) {
      const config = await this.fetchJson(httpUrl(this.server, 'webrtc/config', this.agent, token));
      const pc = new RTCPeerConnection({
        iceServers: config.ice_servers || [],
        iceTransportPolicy: config.ice_transport_policy === 'relay' ? 'relay' : 'all',
      });
      this.pc = pc;
      for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
      const dc = pc.createDataChannel('control', { ordered: true });
      this.dc = dc;
      dc.onmessage = (event) => {
        if (typeof event.data === 'string') this.onControl(event.data);
      };
      dc.onclose = () => {
        if (this.dc === dc) this.finishPeer();
      };
      pc.ontrack = (event) => this.onRemoteTrack(event);
      if (!this._pagehide) {
        // Closing the tab: hang up and close the peer connection, so the service ends the call at once
        // (otherwise it notices only when the caller's audio has been missing for its media timeout).
        this._pagehide = () => {
          if (!this.pc) return;
          this.send({ type: 'hangup' });
          this.closePeer();
        };
        window.addEventListener('pagehide', this._pagehide);
      }
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringDone(pc, GATHER_TIMEOUT_MS);
      const answer = await this.fetchJson(httpUrl(this.server, 'webrtc/offer', this.agent, token), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: 'offer' }),
      });
      if (this.pc !== pc) throw setupError('cancelled', 'Call cancelled', true);
      this.callId = answer.call_id || null;
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      await connected(pc, CONNECT_TIMEOUT_MS);
      this.transport = 'webrtc';
      this.emit('transport', { transport: 'webrtc' });
      pc.addEventListener('connectionstatechange', () => {
        if (this.pc === pc && (pc.connectionState === 'failed' || pc.connectionState === 'closed')) this.finishPeer();
      });
    }

    /** The agent's voice: played by an audio element (Chrome needs one for remote WebRTC audio) and
     * measured by the AnalyserNode (outputLevel). */
    onRemoteTrack(event) {
      const stream = event.streams && event.streams[0] ? event.streams[0] : new MediaStream([event.track]);
      const audio = new Audio();
      audio.autoplay = true;
      audio.srcObject = stream;
      audio.play().catch(() => {});
      this.audioEl = audio;
      if (this.ctx && this.analyser) {
        const source = this.ctx.createMediaStreamSource(stream);
        const mute = this.ctx.createGain();
        mute.gain.value = 0;
        source.connect(this.analyser);
        this.analyser.connect(mute);
        mute.connect(this.ctx.destination);
      }
    }

    /** The WebRTC call is over (call.ended, channel closed, connection failed): final state, teardown. */
    finishPeer() {
      if (this._finished) return;
      this._finished = true;
      const normal = this._ended && this.callId !== null;
      let text;
      if (normal) text = END_TEXT[this.endReason] || 'Call ended';
      else text = (this.lastError && this.lastError.message) || 'Connection lost';
      if (!this._ended) {
        this._ended = true;
        this.emit('ended', { type: 'call.ended', reason: 'closed', call_id: this.callId });
      }
      this.setState(normal ? 'ended' : 'error', text);
      this.teardown();
    }

    closePeer() {
      const pc = this.pc;
      this.pc = null;
      this.dc = null;
      if (pc) {
        try {
          pc.close();
        } catch (err) {
          /* already closed */
        }
      }
      if (this.audioEl) {
        this.audioEl.srcObject = null;
        this.audioEl = null;
      }
    }

    openSocket(url) {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      ws.onmessage = (event) => {
        if (typeof event.data === 'string') this.onControl(event.data);
        else this.onAudio(event.data);
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        const normal = event.code === 1000 && this.callId !== null;
        let text;
        if (normal) text = END_TEXT[this.endReason] || 'Call ended';
        else text = (this.lastError && this.lastError.message) || event.reason || CLOSE_TEXT[event.code] || 'Call ended';
        if (!this._ended) {
          this._ended = true;
          this.emit('ended', { type: 'call.ended', reason: 'closed', code: event.code, call_id: this.callId });
        }
        this.setState(normal ? 'ended' : 'error', text);
        this.teardown();
      };
      ws.onerror = () => {
        this.lastError = this.lastError || { code: 'socket', message: 'Could not reach the voice service' };
      };
    }

    onMicMessage(msg) {
      if (msg.type === 'frame') {
        if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === 'live') {
          this.ws.send(msg.pcm);
          this.stats.framesSent++;
        }
      } else if (msg.type === 'level') {
        this.micLevel = msg.rms;
      }
    }

    onPlayerMessage(msg) {
      if ((msg.type === 'played' || msg.type === 'cleared') && msg.item) {
        this.send({ type: 'playback', item_id: msg.item, played_ms: msg.playedMs });
        this.stats.reports++;
      }
    }

    onAudio(buffer) {
      this.stats.bytesReceived += buffer.byteLength;
      this.stats.framesReceived++;
      if (!this.player || buffer.byteLength < 2) return;
      const pcm = new Int16Array(buffer, 0, buffer.byteLength >> 1);
      const samples = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
      this.player.port.postMessage({ type: 'audio', item: this.currentItem, samples: samples }, [samples.buffer]);
    }

    onControl(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (err) {
        return;
      }
      switch (msg.type) {
        case 'call.started':
          this.callId = msg.call_id;
          if (this.transport === 'websocket' && msg.audio && msg.audio.rate && msg.audio.rate !== WIRE_RATE) {
            this.fail('bad_format', 'unsupported audio rate ' + msg.audio.rate);
            this.hangup();
            return;
          }
          this.setState('live', 'Live');
          this.emit('started', msg);
          break;
        case 'agent.item':
          this.currentItem = msg.item_id;
          break;
        case 'clear':
          if (this.player) this.player.port.postMessage({ type: 'clear' });
          this.emit('clear', msg);
          break;
        case 'transcript.delta':
        case 'transcript.done':
          this.emit('transcript', msg);
          break;
        case 'cost':
          this.emit('cost', msg);
          break;
        case 'dtmf.ack':
          this.emit('dtmf', msg);
          break;
        case 'tool':
          this.emit('tool', msg);
          break;
        case 'error':
          this.lastError = { code: msg.code, message: msg.message };
          this.emit('error', msg);
          break;
        case 'call.ended':
          this._ended = true;
          this.endReason = msg.reason;
          this.emit('ended', msg);
          if (this.transport === 'webrtc') setTimeout(() => this.finishPeer(), 300);
          break;
        default:
          break;
      }
    }

    fail(code, message) {
      this.lastError = { code: code, message: message };
      this.emit('error', { type: 'error', code: code, message: message });
      this.setState('error', message);
    }

    send(message) {
      if (this.dc && this.dc.readyState === 'open') this.dc.send(JSON.stringify(message));
      else if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    }

    /** Press a keypad key (0-9, *, #, A-D). */
    sendDtmf(digit) {
      this.send({ type: 'dtmf', digit: String(digit) });
    }

    /** Mute or unmute the microphone (silence is still sent, so the call's clock keeps going). */
    setMuted(muted) {
      if (this.mic) this.mic.port.postMessage({ type: 'mute', value: !!muted });
      if (this.transport === 'webrtc' && this.stream) {
        for (const track of this.stream.getAudioTracks()) track.enabled = !muted;
      }
    }

    /** End the call. */
    hangup() {
      if (this.pc) {
        const pc = this.pc;
        if (this.dc && this.dc.readyState === 'open') {
          this.send({ type: 'hangup' });
          setTimeout(() => {
            if (this.pc === pc) this.finishPeer();
          }, 1500);
        } else {
          this._ended = true;
          this.endReason = 'caller_hangup';
          this.finishPeer();
        }
      } else if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.send({ type: 'hangup' });
        const ws = this.ws;
        setTimeout(() => {
          if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'caller hung up');
        }, 1500);
      } else {
        this.teardown();
        if (this.state !== 'error') this.setState('ended', 'Call ended');
      }
    }

    /** RMS of the agent audio being played right now (WebAudio AnalyserNode). */
    outputLevel() {
      if (!this.analyser) return 0;
      const data = new Float32Array(this.analyser.fftSize);
      this.analyser.getFloatTimeDomainData(data);
      let sum = 0;
      for (let i = 0; i < data.length; i++) sum += data[i] * data[i];
      return Math.sqrt(sum / data.length);
    }

    teardown() {
      this.closePeer();
      if (this.stream) {
        for (const track of this.stream.getTracks()) track.stop();
        this.stream = null;
      }
      const ctx = this.ctx;
      this.ctx = null;
      this.mic = null;
      this.player = null;
      this.analyser = null;
      if (ctx && ctx.state !== 'closed') ctx.close().catch(() => {});
    }
  }

  /** Renders transcript messages into a container: one bubble per item, deltas appended live. */
  class TranscriptView {
    constructor(container, doc) {
      this.container = container;
      this.doc = doc || document;
      this.bubbles = new Map();
    }

    bubble(role, itemId) {
      const key = role + ':' + (itemId || Math.random());
      let el = this.bubbles.get(key);
      if (!el) {
        el = this.doc.createElement('div');
        el.className = 'vw-line vw-' + role;
        const who = this.doc.createElement('span');
        who.className = 'vw-who';
        who.textContent = role === 'agent' ? 'Agent' : 'You';
        const text = this.doc.createElement('span');
        text.className = 'vw-text';
        el.appendChild(who);
        el.appendChild(text);
        this.container.appendChild(el);
        this.bubbles.set(key, el);
      }
      return el;
    }

    handle(msg) {
      const role = msg.role === 'agent' ? 'agent' : 'caller';
      const el = this.bubble(role, msg.item_id);
      const text = el.querySelector('.vw-text');
      if (msg.type === 'transcript.delta') {
        text.textContent += msg.delta || '';
      } else {
        if (typeof msg.text === 'string') text.textContent = msg.text;
        if (msg.interrupted) el.classList.add('vw-interrupted');
        el.classList.add('vw-done');
      }
      this.container.scrollTop = this.container.scrollHeight;
    }

    note(text, kind) {
      const el = this.doc.createElement('div');
      el.className = 'vw-note' + (kind ? ' vw-' + kind : '');
      el.textContent = text;
      this.container.appendChild(el);
      this.container.scrollTop = this.container.scrollHeight;
    }

    clear() {
      this.container.textContent = '';
      this.bubbles.clear();
    }
  }

  function formatUsd(text) {
    const value = Number(text);
    if (!isFinite(value)) return '$0.0000';
    return '$' + value.toFixed(value < 1 ? 4 : 2);
  }

  const KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

  const WIDGET_CSS = `
    :host { all: initial; }
    .vw-fab { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; border: 0; border-radius: 999px;
      padding: 14px 22px; font: 600 16px/1 system-ui, sans-serif; color: #fff; background: #2f6fde;
      box-shadow: 0 6px 20px rgba(20, 40, 90, .3); cursor: pointer; }
    .vw-fab.vw-live { background: #d93838; }
    .vw-panel { position: fixed; right: 20px; bottom: 76px; z-index: 2147483000; width: 320px; max-height: 460px;
      display: none; flex-direction: column; gap: 8px; padding: 14px; border-radius: 14px; background: #fff;
      color: #1d2433; font: 14px/1.4 system-ui, sans-serif; box-shadow: 0 10px 30px rgba(20, 40, 90, .25); }
    .vw-panel.vw-open { display: flex; }
    .vw-head { display: flex; justify-content: space-between; align-items: center; font-weight: 600; }
    .vw-cost { font: 600 13px ui-monospace, monospace; color: #1f7a4a; }
    .vw-status { font-size: 13px; color: #5b6475; }
    .vw-transcript { flex: 1; min-height: 120px; max-height: 240px; overflow-y: auto; display: flex;
      flex-direction: column; gap: 6px; }
    .vw-line { padding: 6px 9px; border-radius: 10px; max-width: 85%; }
    .vw-agent { background: #eef3fd; align-self: flex-start; }
    .vw-caller { background: #e8f6ee; align-self: flex-end; }
    .vw-who { display: block; font-size: 11px; color: #5b6475; }
    .vw-interrupted .vw-text::after { content: ' …'; color: #999; }
    .vw-note { font-size: 12px; color: #5b6475; text-align: center; }
    .vw-error { color: #b42318; }
    .vw-keys { display: grid; grid-template-columns: repeat(6, 1fr); gap: 4px; }
    .vw-keys button { padding: 6px 0; border: 1px solid #d5dbe5; border-radius: 6px; background: #f7f9fc;
      font: 600 14px system-ui, sans-serif; cursor: pointer; }
    .vw-keys button:disabled { opacity: .5; cursor: default; }`;

  /** Mount the floating Talk button and its panel (shadow DOM, so page styles do not leak in). */
  function mount(options) {
    const opts = options || {};
    const host = document.createElement('div');
    host.setAttribute('data-voice-widget', '');
    const root = host.attachShadow({ mode: 'open' });
    const style = document.createElement('style');
    style.textContent = WIDGET_CSS;
    root.appendChild(style);
    const label = opts.label || 'Talk';
    const fab = document.createElement('button');
    fab.className = 'vw-fab';
    fab.type = 'button';
    fab.textContent = label;
    fab.setAttribute('aria-label', label);
    const panel = document.createElement('div');
    panel.className = 'vw-panel';
    panel.innerHTML =
      '<div class="vw-head"><span class="vw-title"></span><span class="vw-cost">$0.0000</span></div>' +
      '<div class="vw-status" role="status">Press Talk to start</div>' +
      '<div class="vw-transcript" aria-live="polite"></div>' +
      '<div class="vw-keys"></div>';
    panel.querySelector('.vw-title').textContent = opts.title || 'Voice assistant';
    const keys = panel.querySelector('.vw-keys');
    for (const key of KEYS) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = key;
      b.disabled = true;
      keys.appendChild(b);
    }
    root.appendChild(panel);
    root.appendChild(fab);
    document.body.appendChild(host);

    const client = new VoiceClient(opts);
    const transcript = new TranscriptView(panel.querySelector('.vw-transcript'), document);
    const status = panel.querySelector('.vw-status');
    const cost = panel.querySelector('.vw-cost');
    keys.addEventListener('click', (event) => {
      const key = event.target && event.target.textContent;
      if (key && KEYS.includes(key)) client.sendDtmf(key);
    });
    client.addEventListener('status', (e) => {
      status.textContent = e.detail.text;
      const live = e.detail.state === 'live' || e.detail.state === 'connecting';
      fab.textContent = live ? 'Hang up' : label;
      fab.classList.toggle('vw-live', live);
      for (const b of keys.querySelectorAll('button')) b.disabled = e.detail.state !== 'live';
    });
    client.addEventListener('transcript', (e) => transcript.handle(e.detail));
    client.addEventListener('cost', (e) => {
      cost.textContent = formatUsd(e.detail.total_usd);
    });
    client.addEventListener('error', (e) => transcript.note(e.detail.message || 'Error', 'error'));
    fab.addEventListener('click', () => {
      if (client.state === 'live' || client.state === 'connecting') {
        client.hangup();
      } else {
        panel.classList.add('vw-open');
        transcript.clear();
        cost.textContent = '$0.0000';
        client.start();
      }
    });
    return client;
  }

  window.VoiceWidget = {
    instance: null,
    VoiceClient: VoiceClient,
    TranscriptView: TranscriptView,
    formatUsd: formatUsd,
    mount: mount,
    KEYS: KEYS,
    STATIC_BASE: STATIC_BASE,
    SERVER_BASE: SERVER_BASE,
  };

  if (script && script.dataset.mount !== 'none') {
    const options = {
      agent: script.dataset.agent || '',
      token: script.dataset.token || '',
      tokenUrl: script.dataset.tokenUrl || '',
      label: script.dataset.label || '',
      title: script.dataset.title || '',
      transport: script.dataset.transport || 'auto',
    };
    const mountNow = () => {
      window.VoiceWidget.instance = mount(options);
    };
    if (document.body) mountNow();
    else document.addEventListener('DOMContentLoaded', mountNow);
  }
})();
