/*
 * The caller page at "/": agent choice, Talk button, live transcript, keypad, cost meter, levels.
 * Uses window.VoiceWidget (widget.js) for the protocol and audio. window.voicePage exposes the client and
 * a small state object (used by the end-to-end browser test).
 */
(function () {
  'use strict';

  const W = window.VoiceWidget;
  const $ = (id) => document.getElementById(id);
  const talk = $('talk');
  const talkLabel = talk.querySelector('.talk-label');
  const statusEl = $('status');
  const timerEl = $('timer');
  const agentSelect = $('agent');
  const transportSelect = $('transport');
  const keypad = $('keypad');
  const transcriptEl = $('transcript');
  const transcript = new W.TranscriptView(transcriptEl, document);

  const state = {
    status: 'idle',
    callId: null,
    maxOutputRms: 0,
    transcripts: [],
    cost: null,
    errors: [],
    ended: null,
    transport: null,
    fallback: null,
  };

  const params = new URLSearchParams(location.search);
  if (['auto', 'webrtc', 'websocket'].includes(params.get('transport'))) transportSelect.value = params.get('transport');
  let client = null;
  let startedAt = 0;
  let ticker = null;
  let agents = [];

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.dataset.kind = kind || '';
  }

  async function loadAgents() {
    try {
      const response = await fetch('/api/agents');
      const body = await response.json();
      agents = body.agents || [];
      const wanted = params.get('agent') || body.default;
      for (const agent of agents) {
        const option = document.createElement('option');
        option.value = agent.name;
        option.textContent = agent.name;
        if (agent.name === wanted) option.selected = true;
        agentSelect.appendChild(option);
      }
      showDescription();
    } catch (err) {
      setStatus('Could not load the agents: ' + err.message, 'error');
    }
  }

  function showDescription() {
    const agent = agents.find((a) => a.name === agentSelect.value);
    $('agent-description').textContent = agent ? agent.description : '';
  }

  function buildKeypad() {
    for (const key of W.KEYS) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = key;
      b.disabled = true;
      b.addEventListener('click', () => press(key));
      keypad.appendChild(b);
    }
  }

  function press(key) {
    if (!client || client.state !== 'live') return;
    client.sendDtmf(key);
    beep(key);
  }

  const DTMF = {
    1: [697, 1209], 2: [697, 1336], 3: [697, 1477], 4: [770, 1209], 5: [770, 1336], 6: [770, 1477],
    7: [852, 1209], 8: [852, 1336], 9: [852, 1477], '*': [941, 1209], 0: [941, 1336], '#': [941, 1477],
  };

  function beep(key) {
    const ctx = client && client.ctx;
    const pair = DTMF[key];
    if (!ctx || !pair) return;
    const gain = ctx.createGain();
    gain.gain.value = 0.05;
    gain.connect(ctx.destination);
    for (const f of pair) {
      const osc = ctx.createOscillator();
      osc.frequency.value = f;
      osc.connect(gain);
      osc.start();
      osc.stop(ctx.currentTime + 0.12);
    }
  }

  function setKeypad(enabled) {
    for (const b of keypad.querySelectorAll('button')) b.disabled = !enabled;
  }

  function tick() {
    const s = Math.floor((Date.now() - startedAt) / 1000);
    timerEl.textContent = Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
  }

  function resetCost() {
    $('cost-total').textContent = '$0.0000';
    $('cost-minute').textContent = '–';
    $('cost-cache').textContent = '–';
    $('cost-saved').textContent = '$0.0000';
  }

  function showCost(msg) {
    state.cost = msg;
    $('cost-total').textContent = W.formatUsd(msg.total_usd);
    $('cost-minute').textContent = msg.per_minute_usd ? W.formatUsd(msg.per_minute_usd) : '–';
    const b = msg.breakdown || {};
    const share = b.cached_share;
    $('cost-cache').textContent = share === null || share === undefined ? '–' : (Number(share) * 100).toFixed(0) + '%';
    if (b.savings_usd !== undefined) $('cost-saved').textContent = W.formatUsd(b.savings_usd);
  }

  function updateLevels() {
    if (!client) return;
    const out = client.outputLevel();
    state.maxOutputRms = Math.max(state.maxOutputRms, out);
    $('out-level').style.width = Math.min(100, out * 400) + '%';
    $('mic-level').style.width = Math.min(100, client.micLevel * 400) + '%';
  }

  function startCall() {
    const agent = agentSelect.value || params.get('agent') || '';
    client = new W.VoiceClient({ agent: agent, token: params.get('token') || '', transport: transportSelect.value });
    window.voicePage.client = client;
    state.callId = null;
    state.ended = null;
    state.transport = null;
    state.fallback = null;
    transcript.clear();
    resetCost();
    $('call-id').textContent = '';
    client.addEventListener('status', (e) => {
      state.status = e.detail.state;
      const live = e.detail.state === 'live' || e.detail.state === 'connecting';
      talk.classList.toggle('live', live);
      talk.setAttribute('aria-pressed', live ? 'true' : 'false');
      talkLabel.textContent = live ? 'Hang up' : 'Talk';
      agentSelect.disabled = live;
      transportSelect.disabled = live;
      setKeypad(e.detail.state === 'live');
      setStatus(e.detail.text, e.detail.state);
      if (e.detail.state === 'live') {
        startedAt = Date.now();
        ticker = setInterval(tick, 250);
      } else if (!live) {
        clearInterval(ticker);
      }
    });
    client.addEventListener('started', (e) => {
      state.callId = e.detail.call_id;
      $('call-id').textContent = e.detail.call_id;
      transcript.note('Call started with ' + agent + (state.transport ? ' over ' + (state.transport === 'webrtc' ? 'WebRTC' : 'the WebSocket') : ''));
    });
    client.addEventListener('transcript', (e) => {
      state.transcripts.push(e.detail);
      transcript.handle(e.detail);
    });
    client.addEventListener('transport', (e) => {
      state.transport = e.detail.transport;
      if (e.detail.fallback) {
        state.fallback = e.detail.reason || 'WebRTC unavailable';
        transcript.note('WebRTC unavailable (' + state.fallback + '), using the WebSocket');
      }
    });
    client.addEventListener('cost', (e) => showCost(e.detail));
    client.addEventListener('dtmf', (e) => transcript.note('Key ' + e.detail.digit));
    client.addEventListener('tool', (e) => {
      if (e.detail.status !== 'done') transcript.note('Agent is using ' + e.detail.name + '…', 'tool');
    });
    client.addEventListener('error', (e) => {
      state.errors.push(e.detail);
      transcript.note(e.detail.message || 'Error', 'error');
    });
    client.addEventListener('ended', (e) => {
      state.ended = e.detail;
      if (e.detail.reason && e.detail.reason !== 'closed') transcript.note('Call ended (' + e.detail.reason + ')');
    });
    client.start();
  }

  talk.addEventListener('click', () => {
    if (client && (client.state === 'live' || client.state === 'connecting')) client.hangup();
    else startCall();
  });
  agentSelect.addEventListener('change', showDescription);
  $('mute').addEventListener('change', (e) => client && client.setMuted(e.target.checked));
  document.addEventListener('keydown', (e) => {
    if (e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT')) return;
    if (W.KEYS.includes(e.key)) press(e.key);
  });

  window.voicePage = { client: null, state: state, startCall: startCall };
  buildKeypad();
  loadAgents();
  setInterval(updateLevels, 50);
})();
