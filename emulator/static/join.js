"use strict";
// The emulator's join page: one RTCPeerConnection to the emulator (no STUN or TURN: host
// candidates only, as on one machine or a LAN) and one WebSocket for the offer/answer and the
// roster. window.joinState is the page's state as data, for people debugging and for tests.
(() => {
  const LEVEL_MS = 50; // how often the bot audio level is measured
  const STATS_MS = 500; // how often RTP statistics are read

  const state = {
    phase: "idle", // idle | joining | joined | left | error
    connection: "new", // the RTCPeerConnection's connectionState
    participantId: null,
    meeting: null,
    error: null,
    leftReason: null,
    botAudioLevel: 0, // RMS (0..1) of the bot audio the page plays, over the analyser's window
    botAudioPeakLevel: 0, // the highest botAudioLevel so far
    botAudioPackets: 0,
    botVideoFrames: 0, // frames of the bot's video decoded
    botVideoSize: null,
    botVideoPlaying: false, // the bot tile shows frames (until the bot's video stops)
    videoFrom: null, // the roster id of the bot whose video the tile shows
    sentAudioPackets: 0,
    sentVideoFrames: 0,
    roster: [],
  };
  window.joinState = state;
  // What a join starts from: nothing of an earlier join (Leave, then Join again) carries over.
  const FRESH = {
    connection: "new",
    participantId: null,
    error: null,
    leftReason: null,
    botAudioLevel: 0,
    botAudioPeakLevel: 0,
    botAudioPackets: 0,
    botVideoFrames: 0,
    botVideoSize: null,
    botVideoPlaying: false,
    videoFrom: null,
    sentAudioPackets: 0,
    sentVideoFrames: 0,
    roster: [],
  };

  const $ = (id) => document.getElementById(id);
  let pc = null;
  let ws = null;
  let local = null;
  let audioContext = null;
  const timers = [];

  function setStatus(text, isError = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function fail(message) {
    state.phase = "error";
    state.error = message;
    setStatus(message, true);
    teardown();
  }

  function socketUrl() {
    const path = location.pathname.replace(/\/join\/?$/, "/ws");
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
  }

  // The emulator's WebRTC stack does not take trickled candidates: offer once gathering is done.
  function iceGathered(connection) {
    return new Promise((resolve) => {
      if (connection.iceGatheringState === "complete") {
        resolve();
        return;
      }
      connection.addEventListener("icegatheringstatechange", () => {
        if (connection.iceGatheringState === "complete") resolve();
      });
    });
  }

  async function openDevices() {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    } catch (err) {
      // No camera (or it was refused): join with the microphone alone.
      return await navigator.mediaDevices.getUserMedia({ audio: true });
    }
  }

  async function join(event) {
    event.preventDefault();
    if (state.phase === "joining" || state.phase === "joined") return;
    $("join").disabled = true;
    Object.assign(state, FRESH, { phase: "joining" });
    setStatus("Opening microphone and camera…");
    // Made on the click, so the browser lets it play.
    audioContext = new AudioContext();
    try {
      local = await openDevices();
    } catch (err) {
      fail(`No microphone: ${err.message}`);
      return;
    }
    $("own-video").srcObject = local;
    pc = new RTCPeerConnection({ iceServers: [] });
    for (const track of local.getTracks()) pc.addTrack(track, local);
    if (!local.getVideoTracks().length) pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", onTrack);
    pc.addEventListener("connectionstatechange", onConnectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const camera = local.getVideoTracks()[0]?.getSettings() ?? {};
    setStatus("Joining…");
    // Events of an earlier socket (a join after a leave) are ignored: `socket !== ws`.
    const socket = new WebSocket(socketUrl());
    ws = socket;
    socket.addEventListener("open", () => {
      socket.send(
        JSON.stringify({
          type: "join",
          name: $("name").value,
          sdp: pc.localDescription.sdp,
          camera: { width: camera.width, height: camera.height },
        }),
      );
    });
    socket.addEventListener("message", (event) => {
      if (socket !== ws) return;
      onMessage(event).catch((err) => fail(`Could not join: ${err.message}`));
    });
    socket.addEventListener("close", () => {
      if (socket === ws) onSocketClose();
    });
    $("leave").disabled = false;
  }

  function onConnectionState() {
    state.connection = pc.connectionState;
    if (pc.connectionState === "connected") {
      state.phase = "joined";
      setStatus("In the meeting.");
    } else if (pc.connectionState === "failed") {
      fail("The media connection failed.");
    }
  }

  async function onMessage(event) {
    const message = JSON.parse(event.data);
    if (message.type === "answer") {
      state.participantId = message.participantId;
      await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
    } else if (message.type === "state") {
      // A push that crossed our leave is not the meeting any more: the roster stays cleared.
      if (state.phase === "left" || state.phase === "error") return;
      state.meeting = message.meeting;
      state.roster = message.roster;
      state.videoFrom = message.videoFrom;
      renderRoster(message.roster);
      renderBotCaption();
      $("meeting").textContent = message.meeting.subject || message.meeting.threadId;
    } else if (message.type === "left") {
      state.leftReason = message.reason;
    } else if (message.type === "error") {
      fail(`The emulator said: ${message.message}`);
    }
  }

  function onSocketClose() {
    if (state.phase !== "error") {
      state.phase = "left";
      setStatus(`Left the meeting${state.leftReason ? ` (${state.leftReason})` : ""}.`);
    }
    teardown();
  }

  function onTrack(event) {
    const stream = new MediaStream([event.track]);
    if (event.track.kind === "video") {
      // The tile says "no video" until a frame plays, and again when the bot's video stops:
      // a bare video element is as dark before its first frame as a black picture.
      const video = $("bot-video");
      video.srcObject = stream;
      // A playing element fires no "playing" again when frames come back after a mute.
      event.track.addEventListener("unmute", () => {
        video
          .play()
          .then(() => setBotVideoPlaying(!video.paused && video.videoWidth > 0))
          .catch(() => {});
      });
      event.track.addEventListener("mute", () => setBotVideoPlaying(false));
      video.play().catch(() => {});
      return;
    }
    // Chromium feeds a remote stream to WebAudio only while a media element plays it too.
    const audio = $("bot-audio");
    audio.srcObject = stream;
    audio.play().catch(() => {});
    const analyser = audioContext.createAnalyser();
    analyser.fftSize = 2048;
    audioContext.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    timers.push(
      setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const x of samples) sum += x * x;
        const level = Math.sqrt(sum / samples.length);
        state.botAudioLevel = level;
        state.botAudioPeakLevel = Math.max(state.botAudioPeakLevel, level);
        $("bot-level").value = level;
      }, LEVEL_MS),
    );
    if (timers.length === 1) timers.push(setInterval(readStats, STATS_MS));
  }

  async function readStats() {
    if (!pc) return;
    const stats = await pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "audio") {
        state.botAudioPackets = report.packetsReceived ?? 0;
      } else if (report.type === "inbound-rtp" && report.kind === "video") {
        state.botVideoFrames = report.framesDecoded ?? 0;
        if (report.frameWidth) state.botVideoSize = [report.frameWidth, report.frameHeight];
      } else if (report.type === "outbound-rtp" && report.kind === "audio") {
        state.sentAudioPackets = report.packetsSent ?? 0;
      } else if (report.type === "outbound-rtp" && report.kind === "video") {
        state.sentVideoFrames = report.framesEncoded ?? 0;
      }
    }
  }

  function setBotVideoPlaying(playing) {
    state.botVideoPlaying = playing;
    $("bot-tile").classList.toggle("no-video", !playing);
  }

  function renderBotCaption() {
    const bots = state.roster.filter((person) => person.kind === "bot");
    const shown = bots.find((person) => person.id === state.videoFrom) ?? bots[0];
    $("bot-name").textContent = shown ? shown.name : "Bot";
  }

  // MSIs in decimal, as Graph's mediaStream.sourceId and the status page show them.
  function streamsText(streams) {
    return (streams ?? []).map((s) => `${s.mediaType} ${s.sourceId}`).join(", ");
  }

  function renderRoster(roster) {
    const items = roster.map((person) => {
      const item = document.createElement("li");
      item.dataset.id = person.id;
      item.dataset.kind = person.kind;
      item.classList.toggle("speaking", person.speaking);
      item.classList.toggle("dominant", person.dominant);
      item.append(person.name);
      const tags = [];
      if (person.kind === "you") tags.push("you");
      if (person.kind === "bot") tags.push("bot");
      if (person.muted) tags.push("muted");
      if (person.speaking) tags.push("speaking");
      if (tags.length) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = `(${tags.join(", ")})`;
        item.append(" ", tag);
      }
      const msis = streamsText(person.streams);
      if (msis) {
        const tag = document.createElement("span");
        tag.className = "msi";
        tag.textContent = `MSI ${msis}`;
        item.append(" ", tag);
      }
      return item;
    });
    $("roster").replaceChildren(...items);
  }

  function leave() {
    if (ws && ws.readyState === WebSocket.OPEN) {
      // The emulator answers with "left" and closes the socket.
      ws.send(JSON.stringify({ type: "leave" }));
    }
    state.phase = "left";
    setStatus("Left the meeting.");
    teardown();
  }

  function teardown() {
    // Out of the meeting: no roster (nothing updates it any more) and no frozen tiles.
    state.roster = [];
    state.videoFrom = null;
    renderRoster([]);
    renderBotCaption();
    $("own-video").srcObject = null;
    $("bot-video").srcObject = null;
    setBotVideoPlaying(false);
    for (const timer of timers.splice(0)) clearInterval(timer);
    if (pc) pc.close();
    pc = null;
    if (local) for (const track of local.getTracks()) track.stop();
    local = null;
    if (audioContext) audioContext.close();
    audioContext = null;
    state.connection = "closed";
    $("leave").disabled = true;
    $("join").disabled = false;
  }

  $("join-form").addEventListener("submit", (event) => {
    join(event).catch((err) => fail(`Could not join: ${err.message}`));
  });
  $("leave").addEventListener("click", leave);
  $("bot-video").addEventListener("playing", () => setBotVideoPlaying(true));
})();
