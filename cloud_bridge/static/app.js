/* Fleet live view: vehicles on a map, a live event feed and trip replay.
 *
 * Plain browser JavaScript with no build step; Leaflet is vendored under /static/vendor/ so the
 * page works with no internet. Everything that comes from the API is put into the DOM with
 * textContent (device ids and zone names are chosen by devices and operators, not by us).
 */
"use strict";

(() => {
  // The browser test counts pixels of these colours (tests/support/browser.py); app.css repeats
  // them as CSS variables. Markers are drawn fully opaque so the colours stay exact.
  const COLOURS = Object.freeze({
    online: "#0ea5e9",
    offline: "#64748b",
    track: "#7c3aed",
    harsh: "#dc2626",
    idle: "#f59e0b",
    cursor: "#10b981",
    mapBg: "#eef2f6",
    graticule: "#cbd5e1",
  });

  const TOKEN_KEY = "fleetLiveView.token";
  const EVENT_LIMIT = 200;
  // Bridge workers commit events slightly out of order: re-read this much behind the newest.
  const EVENT_OVERLAP_MS = 10_000;
  const FEED_MAX = 300;
  const REQUEST_TIMEOUT_MS = 15_000;
  const HARSH_TYPES = new Set(["harsh_acceleration", "harsh_braking", "harsh_cornering", "impact"]);
  const IDLE_TYPES = new Set(["idle_start", "excessive_idle", "idle_end"]);
  const DEFAULT_CONFIG = Object.freeze({ tile_url: null, attribution: "", refresh_s: 10 });

  const state = {
    config: { ...DEFAULT_CONFIG },
    token: null,
    map: null,
    markers: {}, // device id -> L.CircleMarker
    devices: [],
    selectedDevice: null,
    highlighted: null,
    ready: false,
    fitted: false,
    failing: new Map(), // poller name -> last error message
    seen: new Map(), // event id -> received_at (ms), to drop the overlap's repeats
    feed: [], // events shown, newest first
    feedItems: new Map(), // event id -> <li>
    feedLoaded: false,
    cursorMs: null,
    replay: null,
    replayRequest: 0,
    tripsRequest: 0,
  };

  // ---------------------------------------------------------------- small helpers

  const $ = (id) => document.getElementById(id);

  /** Create an element; text goes in with textContent, never as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** Click and keyboard (Enter/Space) activation for a list item. */
  function activate(node, fn) {
    node.tabIndex = 0;
    node.addEventListener("click", fn);
    node.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        fn();
      }
    });
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const parseTs = (iso) => {
    const ms = typeof iso === "string" ? Date.parse(iso) : NaN;
    return Number.isFinite(ms) ? ms : null;
  };
  const pad2 = (n) => String(n).padStart(2, "0");

  function fmtTime(iso) {
    const ms = parseTs(iso);
    if (ms === null) return "—";
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtDateTime(iso) {
    const ms = parseTs(iso);
    if (ms === null) return "—";
    const d = new Date(ms);
    const day = d.toLocaleDateString(undefined, { weekday: "short", day: "numeric", month: "short" });
    return `${day} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }

  function fmtDuration(seconds) {
    if (!isNum(seconds)) return "—";
    const s = Math.max(0, seconds);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    const h = Math.floor(s / 3600);
    return `${h} h ${pad2(Math.round((s - h * 3600) / 60))} min`;
  }

  function fmtClock(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return h ? `${h}:${pad2(m)}:${pad2(s % 60)}` : `${m}:${pad2(s % 60)}`;
  }

  function fmtAgo(iso) {
    const ms = parseTs(iso);
    if (ms === null) return "never";
    const s = (Date.now() - ms) / 1000;
    if (s < 5) return "just now";
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  const fmtKmh = (v) => (isNum(v) ? `${Math.round(v)} km/h` : "—");
  const fmtKm = (m) => (isNum(m) ? `${(m / 1000).toFixed(1)} km` : "—");

  // ---------------------------------------------------------------- event details

  function peakG(d) {
    if (isNum(d.peak_g)) return d.peak_g;
    if (isNum(d.peak_mps2)) return d.peak_mps2 / 9.80665;
    return null;
  }

  function zoneName(d) {
    return typeof d.name === "string" && d.name ? d.name : String(d.zone_id ?? "zone");
  }

  function fuel(d) {
    return isNum(d.fuel_l) && d.fuel_l > 0 ? `, ${d.fuel_l.toFixed(2)} l` : "";
  }

  function harshDetail(d, type) {
    const g = peakG(d);
    const parts = [];
    if (g !== null) parts.push(`${g.toFixed(2)} g`);
    const v = isNum(d.speed_start_kmh) ? d.speed_start_kmh : d.speed_kmh;
    if (isNum(v)) parts.push(`at ${Math.round(v)} km/h`);
    let text = parts.join(" ");
    if (type === "harsh_cornering" && typeof d.direction === "string") text += ` ${d.direction}`;
    return text;
  }

  const DETAILS = {
    harsh_acceleration: harshDetail,
    harsh_braking: harshDetail,
    harsh_cornering: harshDetail,
    impact: harshDetail,
    imu_trace: (d) => (isNum(d.peak_g) ? `trace, peak ${d.peak_g.toFixed(2)} g` : "trace"),
    idle_start: (d) => (isNum(d.duration_s) && d.duration_s > 0 ? `idling ${fmtDuration(d.duration_s)}` : "engine idling"),
    excessive_idle: (d) => `${fmtDuration(d.duration_s)}${fuel(d)}`,
    idle_end: (d) => `idled ${fmtDuration(d.duration_s)}${fuel(d)}`,
    geofence_enter: (d) => zoneName(d) + (d.initial === true ? " (already inside)" : ""),
    geofence_dwell: (d) => `${zoneName(d)}, ${fmtDuration(d.dwell_s)}`,
    geofence_exit: (d) => (isNum(d.dwell_s) ? `${zoneName(d)} after ${fmtDuration(d.dwell_s)}` : zoneName(d)),
    geofence_approach: (d) => (isNum(d.distance_m) ? `${zoneName(d)} in ${Math.round(d.distance_m)} m` : zoneName(d)),
    overspeed: (d) => {
      const limit = isNum(d.limit_kmh) ? ` (limit ${Math.round(d.limit_kmh)})` : "";
      return `max ${fmtKmh(d.max_speed_kmh)}${limit}, ${fmtDuration(d.duration_s)}`;
    },
    stop_start: (d) => (typeof d.engine === "string" ? `engine ${d.engine}` : ""),
    stop_end: (d) => `stopped ${fmtDuration(d.duration_s)}` + (typeof d.engine === "string" ? `, engine ${d.engine}` : ""),
    trip_start: (d) => (typeof d.reason === "string" ? d.reason.replace(/_/g, " ") : ""),
    trip_end: (d) => `${fmtKm(d.distance_m)}, ${fmtDuration(d.duration_s)}`,
    engine_on: (d) => (typeof d.source === "string" ? `by ${d.source}` : ""),
    engine_off: (d) => (isNum(d.running_s) ? `ran ${fmtDuration(d.running_s)}` : ""),
    engine_unknown: (d) => (isNum(d.stale_s) ? `no evidence for ${fmtDuration(d.stale_s)}` : ""),
    dtc: (d) => [d.code, d.status, d.description].filter((x) => typeof x === "string" && x).join(" · "),
    vehicle_identified: (d) => (typeof d.vin === "string" ? `VIN ${d.vin}` : ""),
    obd_connected: (d) => [d.adapter, d.protocol].filter((x) => typeof x === "string" && x).join(", "),
    obd_disconnected: (d) => (typeof d.reason === "string" ? d.reason : ""),
    gps_fix_lost: () => "no position for 5 s",
    gps_fix_acquired: (d) => (isNum(d.outage_s) ? `after ${fmtDuration(d.outage_s)}` : ""),
    agent_started: (d) => (typeof d.version === "string" ? `agent ${d.version}` : ""),
    config_applied: (d) => (isNum(d.version) ? `version ${d.version}` : ""),
    config_rejected: (d) => [isNum(d.version) ? `version ${d.version}` : "", d.reason].filter(Boolean).join(": "),
  };

  /** A one-line summary of an event's data; unknown types show a few plain fields. */
  function eventDetail(ev) {
    const d = ev && typeof ev.data === "object" && ev.data !== null ? ev.data : {};
    let text = "";
    try {
      const fn = DETAILS[ev.type];
      if (fn) {
        text = fn(d, ev.type);
      } else {
        text = Object.entries(d)
          .filter(([, v]) => ["string", "number", "boolean"].includes(typeof v))
          .slice(0, 3)
          .map(([k, v]) => `${k}=${isNum(v) ? +v.toFixed(3) : v}`)
          .join(" ");
      }
    } catch (err) {
      text = "";
    }
    text = String(text);
    return text.length > 160 ? `${text.slice(0, 157)}…` : text;
  }

  function eventCategory(type) {
    if (type === "impact" || type === "imu_trace") return "impact";
    if (HARSH_TYPES.has(type)) return "harsh";
    if (IDLE_TYPES.has(type)) return "idle";
    if (typeof type === "string" && type.startsWith("geofence_")) return "geofence";
    if (["trip_start", "trip_end", "stop_start", "stop_end"].includes(type)) return "trip";
    if (["dtc", "overspeed", "gps_fix_lost", "obd_disconnected", "config_rejected", "engine_unknown"].includes(type)) {
      return "fault";
    }
    return "other";
  }

  // ---------------------------------------------------------------- API and auth

  /** No token, or the bridge refused `token` (401). */
  class AuthError extends Error {
    constructor(message, token = null) {
      super(message);
      this.token = token;
    }
  }
  class HttpError extends Error {
    constructor(status) {
      super(`HTTP ${status}`);
      this.status = status;
    }
  }

  function storeToken(token) {
    state.token = token || null;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // Storage disabled: the token lives in memory for this page only.
    }
  }

  /** The token from `#token=...` (then stored and removed from the address bar) or storage. */
  function readToken() {
    const hash = location.hash.replace(/^#/, "");
    const params = new URLSearchParams(hash);
    const fromHash = params.get("token");
    if (fromHash) {
      storeToken(fromHash);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
      return fromHash;
    }
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (err) {
      return null;
    }
  }

  async function api(path) {
    const token = state.token;
    if (!token) throw new AuthError("no token");
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const resp = await fetch(path, {
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
        cache: "no-store",
        signal: ctrl.signal,
      });
      if (resp.status === 401) throw new AuthError("token refused", token);
      if (!resp.ok) throw new HttpError(resp.status);
      return await resp.json();
    } catch (err) {
      if (err && err.name === "AbortError") throw new Error("request timed out");
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  function showTokenForm(reason) {
    $("token-reason").textContent = reason;
    const modal = $("token-modal");
    if (!modal.hidden) return;
    modal.hidden = false;
    const input = $("token-input");
    input.value = "";
    input.focus();
  }

  /** Ask for a token; false when the 401 was for a token that has since been replaced. */
  function onAuthFailure(err) {
    if (err.token && err.token !== state.token) return false;
    storeToken(null);
    for (const p of pollers) p.stop();
    setFailing("devices", null);
    setFailing("events", null);
    showTokenForm(
      err.token
        ? "The bridge refused this token. Enter a valid API token."
        : "The live view needs the bridge's API token.",
    );
    return true;
  }

  // ---------------------------------------------------------------- polling

  function setFailing(name, message) {
    if (message) state.failing.set(name, message);
    else state.failing.delete(name);
    const banner = $("conn-banner");
    if (state.failing.size) {
      const detail = [...state.failing.values()][0];
      $("conn-banner-text").textContent = "Connection lost, retrying…";
      banner.title = detail;
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    document.body.dataset.connection = state.failing.size ? "lost" : "ok";
  }

  /** Runs `fn` every refresh_s, one call at a time, backing off while calls fail. */
  class Poller {
    constructor(name, fn) {
      this.name = name;
      this.fn = fn;
      this.timer = null;
      this.running = false;
      this.failures = 0;
      this.again = false;
    }

    stop() {
      clearTimeout(this.timer);
      this.timer = null;
    }

    kick() {
      this.stop();
      if (this.running) {
        this.again = true;
        return;
      }
      this.run();
    }

    async run() {
      if (!state.token) return;
      this.running = true;
      let delay = state.config.refresh_s * 1000;
      try {
        const more = await this.fn();
        this.failures = 0;
        setFailing(this.name, null);
        if (more === true) delay = 250;
      } catch (err) {
        if (err instanceof AuthError) {
          if (onAuthFailure(err)) {
            this.running = false;
            return;
          }
          delay = 0; // refused an old token: ask again with the new one
        } else {
          this.failures += 1;
          setFailing(this.name, `${this.name}: ${err && err.message ? err.message : err}`);
          console.warn(`live view: ${this.name} poll failed`, err);
          delay = Math.min(delay * 2 ** Math.min(this.failures - 1, 3), Math.max(30_000, delay));
        }
      }
      this.running = false;
      if (!state.token) return;
      if (this.again) {
        this.again = false;
        delay = 0;
      }
      this.timer = setTimeout(() => this.run(), delay);
    }
  }

  const devicesPoller = new Poller("devices", pollDevices);
  const eventsPoller = new Poller("events", pollEvents);
  const pollers = [devicesPoller, eventsPoller];

  function startPolling() {
    for (const p of pollers) p.kick();
    if (state.selectedDevice) loadTrips(state.selectedDevice);
  }

  // ---------------------------------------------------------------- map

  function initMap() {
    const url = typeof state.config.tile_url === "string" ? state.config.tile_url.trim() : "";
    // Fractional zoom fits the fleet better but blurs raster tiles: only without them.
    const map = L.map("map", { zoomControl: true, worldCopyJump: true, minZoom: 2, zoomSnap: url ? 1 : 0.25 });
    state.map = map;
    map.setView([20, 0], 2);
    map.attributionControl.setPrefix(false);
    L.control.scale({ imperial: false, maxWidth: 140 }).addTo(map);

    map.createPane("graticule").style.zIndex = 250;
    // Replay markers sit above the vehicles' labels (tooltip pane, 650) and above the
    // moving cursor, so an event at the trip's start is never hidden under it.
    map.createPane("cursor").style.zIndex = 655;
    map.createPane("replayEvents").style.zIndex = 660;

    if (url) {
      L.tileLayer(url, { attribution: state.config.attribution || "", maxZoom: 19 }).addTo(map);
    } else {
      addGraticule(map);
    }
    addMousePosition(map);
    document.body.dataset.tiles = url ? "1" : "0";
  }

  /** Light lat/lon lines with labels, so a map with no tiles still reads as a map. */
  function addGraticule(map) {
    const renderer = L.svg({ pane: "graticule", padding: 0.5 });
    const layer = L.layerGroup().addTo(map);
    const NICE = [1, 2, 5];

    function niceStep(degrees) {
      const exp = Math.floor(Math.log10(degrees));
      for (const n of NICE) {
        const step = n * 10 ** exp;
        if (step >= degrees) return step;
      }
      return 10 ** (exp + 1);
    }

    function decimals(step) {
      return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    }

    function label(value, digits, pos, neg) {
      const text = Math.abs(value).toFixed(digits);
      return Number(text) === 0 ? `${text}°` : `${text}°${value > 0 ? pos : neg}`;
    }

    function redraw() {
      layer.clearLayers();
      const size = map.getSize();
      if (!size.x || !size.y) return;
      const b = map.getBounds();
      const south = Math.max(b.getSouth(), -85);
      const north = Math.min(b.getNorth(), 85);
      const west = b.getWest();
      const east = b.getEast();
      const lonStep = Math.min(niceStep(((east - west) * 110) / size.x), 30);
      const latStep = Math.min(niceStep(((north - south) * 90) / size.y), 30);
      const latPad = (north - south) * 0.5;
      const lonPad = (east - west) * 0.5;
      const style = { renderer, color: COLOURS.graticule, weight: 1, opacity: 1, interactive: false };
      const labelAt = (latlng, text, cls) =>
        L.marker(latlng, {
          pane: "graticule",
          interactive: false,
          keyboard: false,
          icon: L.divIcon({ className: `graticule-label ${cls}`, html: el("span", "", text), iconSize: null }),
        });

      // Labels too near an edge would be cut off: keep them inside with some room.
      const inside = (latlng, minX, maxX, minY, maxY) => {
        const pt = map.latLngToContainerPoint(latlng);
        return pt.x >= minX && pt.x <= size.x - maxX && pt.y >= minY && pt.y <= size.y - maxY;
      };
      const latDigits = decimals(latStep);
      for (let lat = Math.ceil((south - latPad) / latStep) * latStep; lat <= north + latPad; lat += latStep) {
        if (lat < -85 || lat > 85) continue;
        layer.addLayer(L.polyline([[lat, west - lonPad], [lat, east + lonPad]], style));
        if (inside([lat, east], 0, 0, 40, 30)) {
          layer.addLayer(labelAt([lat, east], label(lat, latDigits, "N", "S"), "lat"));
        }
      }
      const lonDigits = decimals(lonStep);
      for (let lon = Math.ceil((west - lonPad) / lonStep) * lonStep; lon <= east + lonPad; lon += lonStep) {
        layer.addLayer(L.polyline([[south - latPad, lon], [north + latPad, lon]], style));
        if (inside([north, lon], 50, 60, 0, 0)) {
          const wrapped = ((((lon + 180) % 360) + 360) % 360) - 180;
          layer.addLayer(labelAt([north, lon], label(wrapped, lonDigits, "E", "W"), "lon"));
        }
      }
    }

    map.on("moveend zoomend resize", redraw);
    map.whenReady(redraw);
  }

  function addMousePosition(map) {
    const Control = L.Control.extend({
      onAdd() {
        const div = el("div", "mouse-pos");
        div.hidden = true;
        map.on("mousemove", (e) => {
          div.hidden = false;
          div.textContent = `${e.latlng.lat.toFixed(5)}, ${e.latlng.wrap().lng.toFixed(5)}`;
        });
        map.on("mouseout", () => {
          div.hidden = true;
        });
        return div;
      },
    });
    new Control({ position: "bottomleft" }).addTo(map);
  }

  function tipContent(title, ...lines) {
    const box = el("div");
    box.append(el("div", "tip-title", title));
    for (const line of lines) if (line) box.append(el("div", "tip-sub", line));
    return box;
  }

  // ---------------------------------------------------------------- vehicles

  function positionOf(dev) {
    const p = dev && dev.last_position;
    return p && isNum(p.lat) && isNum(p.lon) ? p : null;
  }

  async function pollDevices() {
    const data = await api("/api/v1/devices");
    if (!data || !Array.isArray(data.devices)) throw new Error("unexpected devices response");
    const devices = data.devices.filter((d) => d && typeof d.device === "string");
    devices.sort((a, b) => a.device.localeCompare(b.device, undefined, { numeric: true }));
    state.devices = devices;
    renderMarkers(devices);
    renderVehicleList(devices);
    renderReplayOptions(devices);
    renderStats(devices);
    if (!state.fitted) fitVehicles();
    if (!state.ready) {
      state.ready = true;
      document.body.dataset.ready = "1";
    }
  }

  function markerStyle(online) {
    return {
      radius: 8,
      color: "#ffffff",
      weight: 2,
      opacity: 1,
      fillColor: online ? COLOURS.online : COLOURS.offline,
      fillOpacity: 1,
    };
  }

  function popupContent(dev) {
    const p = positionOf(dev);
    const box = el("div", "map-tip");
    box.append(el("div", "tip-title", dev.device));
    box.append(el("div", "tip-sub", `${dev.online ? "online" : "offline"} · last seen ${fmtAgo(dev.last_seen)}`));
    if (p) {
      const course = isNum(p.course) ? ` · heading ${Math.round(p.course)}°` : "";
      box.append(el("div", "tip-sub", `${fmtKmh(p.speed_kmh)}${course} at ${fmtTime(p.ts)}`));
      box.append(el("div", "tip-sub", `${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}`));
    }
    const btn = el("button", "btn btn-small", "Trips");
    btn.type = "button";
    btn.style.marginTop = "6px";
    btn.addEventListener("click", () => selectReplayDevice(dev.device));
    box.append(btn);
    return box;
  }

  function renderMarkers(devices) {
    const keep = new Set();
    for (const dev of devices) {
      const p = positionOf(dev);
      if (!p) continue;
      keep.add(dev.device);
      const online = Boolean(dev.online);
      let marker = state.markers[dev.device];
      if (!marker) {
        marker = L.circleMarker([p.lat, p.lon], markerStyle(online)).addTo(state.map);
        marker.bindTooltip(el("span", "", dev.device), {
          permanent: true,
          direction: "right",
          offset: [9, 0],
          className: "veh-label",
        });
        marker.bindPopup(() => popupContent(state.devices.find((d) => d.device === dev.device) || dev));
        marker.on("click", () => highlightVehicle(dev.device, false));
        state.markers[dev.device] = marker;
      } else {
        marker.setLatLng([p.lat, p.lon]);
        marker.setStyle(markerStyle(online));
      }
      if (online) marker.bringToFront();
      const tip = marker.getTooltip() && marker.getTooltip().getElement();
      if (tip) tip.classList.toggle("offline", !online);
    }
    for (const id of Object.keys(state.markers)) {
      if (!keep.has(id)) {
        state.markers[id].remove();
        delete state.markers[id];
      }
    }
    document.body.dataset.vehicles = String(Object.keys(state.markers).length);
  }

  function fitVehicles() {
    const points = Object.values(state.markers).map((m) => m.getLatLng());
    if (!points.length) return;
    state.fitted = true;
    if (points.length === 1) state.map.setView(points[0], 14);
    else state.map.fitBounds(L.latLngBounds(points), { padding: [60, 60], maxZoom: 15 });
  }

  function renderVehicleList(devices) {
    const list = $("vehicle-list");
    const items = devices.map((dev) => {
      const online = Boolean(dev.online);
      const p = positionOf(dev);
      const li = el("li");
      li.dataset.testid = `vehicle-${dev.device}`;
      li.dataset.device = dev.device;
      li.dataset.online = online ? "1" : "0";
      if (dev.device === state.highlighted) li.classList.add("selected");
      li.append(el("span", `sw sw-dot ${online ? "sw-online" : "sw-offline"}`));
      li.append(el("span", "v-id", dev.device));
      const speed = el("span", "v-speed", p ? fmtKmh(p.speed_kmh) : "no fix");
      if (!online || !p || !isNum(p.speed_kmh) || p.speed_kmh < 1) speed.classList.add("muted");
      li.append(speed);
      const sub = el("span", "v-sub");
      sub.append(el("span", `v-state ${online ? "online" : "offline"}`, online ? "online" : "offline"));
      const seen = el("span", "v-seen", `last seen ${fmtAgo(dev.last_seen)}`);
      seen.title = dev.last_seen || "";
      sub.append(el("span", "", "·"), seen);
      li.append(sub);
      activate(li, () => highlightVehicle(dev.device, true));
      return li;
    });
    list.replaceChildren(...items);
    $("vehicle-empty").hidden = devices.length > 0;
    $("vehicle-count").textContent = devices.length ? String(devices.length) : "";
  }

  function highlightVehicle(device, pan) {
    state.highlighted = device;
    for (const li of $("vehicle-list").children) {
      li.classList.toggle("selected", li.dataset.device === device);
      if (li.dataset.device === device && !pan) li.scrollIntoView({ block: "nearest" });
    }
    const marker = state.markers[device];
    if (pan && marker) {
      state.map.panTo(marker.getLatLng());
      marker.openPopup();
    }
  }

  function renderStats(devices) {
    const online = devices.filter((d) => d.online).length;
    const moving = devices.filter((d) => {
      const p = positionOf(d);
      return d.online && p && isNum(p.speed_kmh) && p.speed_kmh >= 3;
    }).length;
    const box = $("fleet-stats");
    box.replaceChildren();
    const part = (n, label) => {
      const span = el("span");
      span.append(el("b", "", n), ` ${label}`);
      return span;
    };
    box.append(part(devices.length, "vehicles"), " · ", part(online, "online"), " · ", part(moving, "moving"));
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    $("updated").textContent = `Updated ${fmtTime(new Date().toISOString())} · ${zone}`;
  }

  // ---------------------------------------------------------------- live event feed

  async function pollEvents() {
    let path = `/api/v1/events?limit=${EVENT_LIMIT}`;
    if (state.cursorMs !== null) {
      path += `&received_after=${encodeURIComponent(new Date(state.cursorMs).toISOString())}`;
    }
    const data = await api(path);
    if (!data || !Array.isArray(data.events)) throw new Error("unexpected events response");
    let newest = null;
    const added = [];
    for (const ev of data.events) {
      if (!ev || !Number.isInteger(ev.id)) continue;
      const rec = parseTs(ev.received_at);
      if (rec !== null && (newest === null || rec > newest)) newest = rec;
      if (state.seen.has(ev.id)) continue;
      state.seen.set(ev.id, rec ?? Date.now());
      added.push(ev);
    }
    const full = data.events.length >= EVENT_LIMIT;
    if (newest !== null) {
      let next = newest - EVENT_OVERLAP_MS;
      // A full page inside the overlap window would be read again forever: step past it.
      if (full && state.cursorMs !== null && next <= state.cursorMs) next = newest;
      if (state.cursorMs === null || next > state.cursorMs) state.cursorMs = next;
    }
    pruneSeen();
    addToFeed(added);
    state.feedLoaded = true;
    return full && added.length > 0;
  }

  function pruneSeen() {
    if (state.seen.size <= 4 * FEED_MAX || state.cursorMs === null) return;
    const shown = new Set(state.feed.map((e) => e.id));
    for (const [id, rec] of state.seen) {
      if (rec < state.cursorMs - 60_000 && !shown.has(id)) state.seen.delete(id);
    }
  }

  function feedKey(ev) {
    return [parseTs(ev.received_at) ?? 0, ev.id];
  }

  function addToFeed(added) {
    if (!added.length && state.feed.length) return;
    const fresh = state.feedLoaded;
    state.feed.push(...added);
    state.feed.sort((a, b) => {
      const [ra, ia] = feedKey(a);
      const [rb, ib] = feedKey(b);
      return rb - ra || ib - ia;
    });
    for (const ev of state.feed.splice(FEED_MAX)) {
      state.feedItems.delete(ev.id);
    }
    const list = $("event-feed");
    const nodes = state.feed.map((ev) => {
      let li = state.feedItems.get(ev.id);
      if (!li) {
        li = feedItem(ev);
        if (fresh) li.classList.add("fresh");
        state.feedItems.set(ev.id, li);
      }
      return li;
    });
    list.replaceChildren(...nodes);
    $("feed-empty").hidden = state.feed.length > 0;
    $("feed-count").textContent = state.feed.length ? String(state.feed.length) : "";
    document.body.dataset.events = String(state.feed.length);
  }

  function feedItem(ev) {
    const li = el("li", `cat-${eventCategory(ev.type)}`);
    li.dataset.testid = `event-${ev.id}`;
    li.dataset.type = String(ev.type);
    li.append(el("span", "e-type", ev.type));
    li.append(el("span", "e-device", ev.device));
    const time = el("span", "e-time", fmtTime(ev.ts));
    time.title = `happened ${ev.ts}\nreceived ${ev.received_at}`;
    const ts = parseTs(ev.ts);
    const rec = parseTs(ev.received_at);
    if (ts !== null && rec !== null && rec - ts > 5 * 60_000) {
      time.append(el("span", "e-late", `+${fmtDuration((rec - ts) / 1000)}`));
    }
    li.append(time);
    li.append(el("div", "e-detail", eventDetail(ev) || "\u00a0"));
    if (isNum(ev.lat) && isNum(ev.lon)) {
      li.classList.add("clickable");
      li.title = "Show on map";
      activate(li, () => flashAt([ev.lat, ev.lon], ev));
    }
    return li;
  }

  function flashAt(latlng, ev) {
    const map = state.map;
    map.setView(latlng, Math.max(map.getZoom(), 15));
    const ring = L.circleMarker(latlng, {
      radius: 14,
      color: COLOURS.harsh,
      weight: 3,
      fill: false,
      className: "flash-ring",
      interactive: false,
    }).addTo(map);
    L.popup({ autoClose: true })
      .setLatLng(latlng)
      .setContent(tipContent(`${ev.type} · ${ev.device}`, eventDetail(ev), fmtDateTime(ev.ts)))
      .openOn(map);
    setTimeout(() => ring.remove(), 3200);
  }

  // ---------------------------------------------------------------- trip replay

  function renderReplayOptions(devices) {
    const select = $("replay-vehicle");
    const current = select.value;
    const options = [new Option("Choose a vehicle…", "")];
    for (const dev of devices) options.push(new Option(dev.device, dev.device));
    const same =
      select.options.length === options.length &&
      options.every((o, i) => select.options[i].value === o.value);
    if (!same) {
      select.replaceChildren(...options);
      select.value = devices.some((d) => d.device === current) ? current : "";
    }
  }

  function selectReplayDevice(device) {
    const select = $("replay-vehicle");
    select.value = device;
    $("replay-card").open = true;
    loadTrips(device);
  }

  async function loadTrips(device) {
    state.selectedDevice = device || null;
    const list = $("trip-list");
    const empty = $("trip-empty");
    list.replaceChildren();
    $("trip-count").textContent = "";
    if (!device) {
      empty.hidden = true;
      return;
    }
    const request = ++state.tripsRequest;
    empty.textContent = "Loading trips…";
    empty.hidden = false;
    let data;
    try {
      data = await api(`/api/v1/devices/${encodeURIComponent(device)}/trips`);
      if (!data || !Array.isArray(data.trips)) throw new Error("unexpected trips response");
    } catch (err) {
      if (request !== state.tripsRequest) return;
      if (err instanceof AuthError) {
        onAuthFailure(err);
        return;
      }
      console.warn("live view: trips failed", err);
      empty.textContent = `Could not load trips (${err.message}).`;
      return;
    }
    if (request !== state.tripsRequest) return;
    const trips = data.trips.filter((t) => t && Number.isInteger(t.id));
    empty.hidden = trips.length > 0;
    empty.textContent = trips.length ? "" : "No trips recorded for this vehicle.";
    $("trip-count").textContent = trips.length ? String(trips.length) : "";
    list.replaceChildren(...trips.map(tripItem));
  }

  function harshTotal(trip) {
    const h = trip && typeof trip.harsh === "object" && trip.harsh !== null ? trip.harsh : {};
    return Object.values(h).reduce((sum, n) => sum + (isNum(n) ? n : 0), 0);
  }

  function tripItem(trip) {
    const li = el("li");
    li.dataset.testid = `trip-${trip.id}`;
    li.dataset.trip = String(trip.id);
    if (state.replay && state.replay.trip.id === trip.id) li.classList.add("selected");
    li.append(el("span", "t-start", fmtDateTime(trip.start)));
    li.append(el("span", "t-km", fmtKm(trip.distance_m)));
    li.append(el("span", "t-dur", fmtDuration(trip.duration_s)));
    const harsh = harshTotal(trip);
    if (harsh) li.append(el("span", "t-harsh", `${harsh} harsh`));
    li.title = `${trip.start} → ${trip.end}`;
    activate(li, () => loadReplay(trip.id));
    return li;
  }

  async function loadReplay(tripId) {
    const request = ++state.replayRequest;
    for (const li of $("trip-list").children) li.classList.toggle("selected", li.dataset.trip === String(tripId));
    let data;
    try {
      data = await api(`/api/v1/trips/${encodeURIComponent(tripId)}/replay`);
      if (!data || !data.trip || !Array.isArray(data.positions)) throw new Error("unexpected replay response");
    } catch (err) {
      if (request !== state.replayRequest) return;
      if (err instanceof AuthError) {
        onAuthFailure(err);
        return;
      }
      console.warn("live view: replay failed", err);
      const empty = $("trip-empty");
      empty.textContent = `Could not load the trip (${err.message}).`;
      empty.hidden = false;
      return;
    }
    if (request !== state.replayRequest) return;
    drawReplay(data);
  }

  function clearReplay() {
    const r = state.replay;
    if (!r) return;
    stopPlaying();
    r.layer.remove();
    state.replay = null;
    $("replay").hidden = true;
    $("replay-side").hidden = true;
    state.map.invalidateSize();
    delete document.body.dataset.replay;
    for (const li of $("trip-list").children) li.classList.remove("selected");
    if (window.liveView) window.liveView.replay = null;
  }

  /** Position at time t (ms) along the track, interpolated between fixes. */
  function interpolate(points, t) {
    if (!points.length) return null;
    if (t <= points[0].t) return points[0];
    const last = points[points.length - 1];
    if (t >= last.t) return last;
    let lo = 0;
    let hi = points.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (points[mid].t <= t) lo = mid;
      else hi = mid;
    }
    const a = points[lo];
    const b = points[hi];
    const f = b.t === a.t ? 0 : (t - a.t) / (b.t - a.t);
    const speed = isNum(a.speed) && isNum(b.speed) ? a.speed + (b.speed - a.speed) * f : a.speed;
    return { t, lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f, speed };
  }

  // One marker per idle: idle_start, excessive_idle and idle_end of the same idle share
  // data.start; the most complete one stands for it (idle_end carries the duration).
  const IDLE_RANK = { idle_start: 0, excessive_idle: 1, idle_end: 2 };

  function idleEpisodes(events) {
    const best = new Map();
    const out = [];
    for (const ev of events) {
      if (!IDLE_TYPES.has(ev.type)) {
        out.push(ev);
        continue;
      }
      const key = (ev.data && typeof ev.data.start === "string" && ev.data.start) || ev.ts;
      const had = best.get(key);
      if (!had || IDLE_RANK[ev.type] > IDLE_RANK[had.type]) best.set(key, ev);
    }
    return out.concat([...best.values()]);
  }

  function eventMarker(ev, latlng, kind) {
    const icon = L.divIcon({
      className: "",
      html: (() => {
        const box = el("div", `ev-marker ${kind}`);
        box.dataset.testid = `replay-event-${ev.id}`;
        box.style.width = "100%";
        box.style.height = "100%";
        return box;
      })(),
      iconSize: [13, 13],
      iconAnchor: [6.5, 6.5],
    });
    const marker = L.marker(latlng, { icon, pane: "replayEvents", keyboard: false, riseOnHover: true });
    marker.bindTooltip(tipContent(ev.type, eventDetail(ev), fmtDateTime(ev.ts)), {
      direction: "top",
      offset: [0, -8],
      className: "map-tip",
    });
    return marker;
  }

  function drawReplay(data) {
    clearReplay();
    const trip = data.trip;
    const points = data.positions
      .filter((p) => p && isNum(p.lat) && isNum(p.lon) && parseTs(p.ts) !== null)
      .map((p) => ({ t: parseTs(p.ts), lat: p.lat, lon: p.lon, speed: p.speed_kmh }))
      .sort((a, b) => a.t - b.t);
    const layer = L.layerGroup().addTo(state.map);
    const latlngs = points.map((p) => [p.lat, p.lon]);
    let track = null;
    if (latlngs.length) {
      L.polyline(latlngs, { color: "#ffffff", weight: 8, opacity: 0.85, interactive: false }).addTo(layer);
      track = L.polyline(latlngs, { color: COLOURS.track, weight: 4, opacity: 1, lineJoin: "round" }).addTo(layer);
      const ends = { radius: 5, color: "#0f172a", weight: 2, fillColor: "#ffffff", fillOpacity: 1 };
      L.circleMarker(latlngs[0], ends).bindTooltip(tipContent("Start", fmtDateTime(trip.start))).addTo(layer);
      L.circleMarker(latlngs[latlngs.length - 1], ends)
        .bindTooltip(tipContent("End", fmtDateTime(trip.end)))
        .addTo(layer);
    }

    const events = idleEpisodes(
      (Array.isArray(data.events) ? data.events : []).filter(
        (ev) => ev && (HARSH_TYPES.has(ev.type) || IDLE_TYPES.has(ev.type)),
      ),
    ).sort((a, b) => (parseTs(a.ts) ?? 0) - (parseTs(b.ts) ?? 0));
    const marked = [];
    let harsh = 0;
    let idle = 0;
    for (const ev of events) {
      let latlng = isNum(ev.lat) && isNum(ev.lon) ? [ev.lat, ev.lon] : null;
      if (!latlng) {
        const at = interpolate(points, parseTs(ev.ts) ?? NaN);
        if (at) latlng = [at.lat, at.lon];
      }
      if (!latlng) continue;
      const kind = HARSH_TYPES.has(ev.type) ? "harsh" : "idle";
      if (kind === "harsh") harsh += 1;
      else idle += 1;
      const marker = eventMarker(ev, latlng, kind).addTo(layer);
      marked.push({ ev, marker, kind });
    }

    const startMs = Math.min(parseTs(trip.start) ?? Infinity, points.length ? points[0].t : Infinity);
    const endMs = Math.max(parseTs(trip.end) ?? -Infinity, points.length ? points[points.length - 1].t : -Infinity);
    const t0 = Number.isFinite(startMs) ? startMs : 0;
    const t1 = Number.isFinite(endMs) ? endMs : t0;
    const cursor = points.length
      ? L.circleMarker(latlngs[0], {
          pane: "cursor",
          renderer: L.svg({ pane: "cursor" }),
          radius: 8,
          color: "#ffffff",
          weight: 2.5,
          fillColor: COLOURS.cursor,
          fillOpacity: 1,
          interactive: false,
        }).addTo(layer)
      : null;

    state.replay = { trip, points, t0, t1, t: t0, layer, track, cursor, marked, playing: false, raf: 0 };
    window.liveView.replay = { trip, track, cursor, harsh, idle, positions: points.length, events: marked };

    renderReplayPanel(trip, marked, t0, t1);
    state.map.invalidateSize();
    const slider = $("replay-slider");
    slider.max = String(Math.max(0, Math.round((t1 - t0) / 1000)));
    slider.value = "0";
    seek(t0);
    if (track) state.map.fitBounds(track.getBounds(), { padding: [50, 50], maxZoom: 16 });
    document.body.dataset.replay = String(trip.id);
  }

  function renderReplayPanel(trip, marked, t0, t1) {
    $("replay").hidden = false;
    $("replay-side").hidden = false;
    const box = $("trip-summary");
    const b = (text) => el("b", "", text);
    const parts = [b(trip.device), ` · ${fmtDateTime(trip.start)} → ${fmtTime(trip.end).slice(0, 5)} · `];
    parts.push(b(fmtKm(trip.distance_m)));
    if (isNum(trip.odometer_km)) parts.push(` (odometer ${trip.odometer_km.toFixed(1)} km)`);
    parts.push(" · ", b(fmtDuration(trip.duration_s)));
    if (isNum(trip.driving_s)) parts.push(` · driving ${fmtDuration(trip.driving_s)}`);
    if (isNum(trip.idle_s)) parts.push(` · idle ${fmtDuration(trip.idle_s)}`);
    parts.push(` · max ${fmtKmh(trip.max_speed_kmh)} · mean ${fmtKmh(trip.mean_speed_kmh)}`);
    const harsh = typeof trip.harsh === "object" && trip.harsh !== null ? trip.harsh : {};
    const harshText = Object.entries(harsh)
      .filter(([, n]) => isNum(n) && n > 0)
      .map(([k, n]) => `${k.replace(/^harsh_/, "")} ${n}`)
      .join(", ");
    parts.push(harshText ? ` · harsh: ${harshText}` : " · no harsh events");
    box.replaceChildren(...parts);

    const jump = (ev, marker) => {
      const t = parseTs(ev.ts);
      stopPlaying();
      if (t !== null) seek(t);
      marker.openTooltip();
    };
    const list = $("trip-events");
    list.replaceChildren(
      ...marked.map(({ ev, marker, kind }) => {
        const li = el("li");
        li.append(el("span", `sw sw-mark sw-${kind}`));
        li.append(el("span", "te-time", fmtTime(ev.ts)));
        li.append(el("span", "te-detail", `${ev.type} ${eventDetail(ev)}`.trim()));
        activate(li, () => jump(ev, marker));
        return li;
      }),
    );
    $("trip-events-empty").hidden = marked.length > 0;

    const ticks = $("replay-ticks");
    const span = Math.max(1, t1 - t0);
    ticks.replaceChildren(
      ...marked.map(({ ev, marker, kind }) => {
        const tick = el("span", `tick ${kind}`);
        const t = parseTs(ev.ts) ?? t0;
        tick.style.left = `${(100 * Math.min(Math.max(t - t0, 0), span)) / span}%`;
        tick.title = `${fmtTime(ev.ts)} ${ev.type} ${eventDetail(ev)}`.trim();
        tick.addEventListener("click", () => jump(ev, marker));
        return tick;
      }),
    );
  }

  function seek(t) {
    const r = state.replay;
    if (!r) return;
    r.t = Math.min(Math.max(t, r.t0), r.t1);
    const at = interpolate(r.points, r.t);
    if (at && r.cursor) r.cursor.setLatLng([at.lat, at.lon]);
    $("replay-slider").value = String(Math.round((r.t - r.t0) / 1000));
    const speed = at && isNum(at.speed) ? ` · ${fmtKmh(at.speed)}` : "";
    $("replay-readout").textContent =
      `${fmtTime(new Date(r.t).toISOString())}${speed} · ${fmtClock((r.t - r.t0) / 1000)} / ${fmtClock((r.t1 - r.t0) / 1000)}`;
  }

  function stopPlaying() {
    const r = state.replay;
    if (!r) return;
    r.playing = false;
    cancelAnimationFrame(r.raf);
    const btn = $("replay-play");
    btn.textContent = "\u25B6";
    btn.setAttribute("aria-label", "Play");
  }

  function togglePlay() {
    const r = state.replay;
    if (!r) return;
    if (r.playing) {
      stopPlaying();
      return;
    }
    if (r.t >= r.t1) seek(r.t0);
    r.playing = true;
    const btn = $("replay-play");
    btn.textContent = "\u275A\u275A";
    btn.setAttribute("aria-label", "Pause");
    let last = performance.now();
    const step = (now) => {
      if (!r.playing || state.replay !== r) return;
      const factor = Number($("replay-speed").value) || 60;
      seek(r.t + (now - last) * factor);
      last = now;
      if (r.t >= r.t1) {
        stopPlaying();
        return;
      }
      r.raf = requestAnimationFrame(step);
    };
    r.raf = requestAnimationFrame(step);
  }

  // ---------------------------------------------------------------- start-up

  async function loadConfig() {
    try {
      const resp = await fetch("/ui/config.json", { cache: "no-store" });
      if (!resp.ok) throw new HttpError(resp.status);
      const cfg = await resp.json();
      return {
        tile_url: typeof cfg.tile_url === "string" && cfg.tile_url.trim() ? cfg.tile_url.trim() : null,
        attribution: typeof cfg.attribution === "string" ? cfg.attribution : "",
        refresh_s: isNum(cfg.refresh_s) && cfg.refresh_s > 0 ? Math.max(1, cfg.refresh_s) : DEFAULT_CONFIG.refresh_s,
      };
    } catch (err) {
      console.warn("live view: no /ui/config.json, using defaults (no tiles)", err);
      return { ...DEFAULT_CONFIG };
    }
  }

  function wireUi() {
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      storeToken(token);
      $("token-modal").hidden = true;
      startPolling();
    });
    $("change-token").addEventListener("click", () => showTokenForm("Enter the bridge's API token."));
    $("token-modal").addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.token) $("token-modal").hidden = true;
    });
    $("replay-vehicle").addEventListener("change", (e) => {
      clearReplay();
      loadTrips(e.target.value);
    });
    $("replay-play").addEventListener("click", togglePlay);
    $("replay-slider").addEventListener("input", (e) => {
      const r = state.replay;
      if (!r) return;
      stopPlaying();
      seek(r.t0 + Number(e.target.value) * 1000);
    });
    $("replay-close").addEventListener("click", () => {
      clearReplay();
      fitVehicles();
    });
    // Relative "last seen" times age between polls.
    setInterval(() => {
      if (state.devices.length) renderVehicleList(state.devices);
    }, 15_000);
  }

  async function main() {
    window.liveView = {
      colours: COLOURS,
      markers: state.markers,
      state,
      map: null,
      replay: null,
      refresh: () => startPolling(),
      eventDetail,
    };
    state.config = await loadConfig();
    initMap();
    window.liveView.map = state.map;
    window.liveView.config = state.config;
    wireUi();
    state.token = readToken();
    if (state.token) startPolling();
    else showTokenForm("The live view needs the bridge's API token.");
  }

  main().catch((err) => {
    console.error("live view failed to start", err);
    const banner = $("conn-banner");
    $("conn-banner-text").textContent = "The live view failed to start; reload the page.";
    banner.hidden = false;
  });
})();
