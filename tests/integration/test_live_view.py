"""The live view in headless Chromium, over a real fleet, broker, bridge and PostgreSQL.

Five simulated vans drive one urban round (about 32 min of driving, generated as
fast as possible) through the agent's own pipeline, outbox and uplink into a real
mosquitto; a ``telematics-bridge run --http`` worker stores it in PostgreSQL and
serves the page with no tile URL, the offline case.  The page must show those
vans, their events and a trip replay with its harsh and idle events marked, in
the DOM and in a screenshot of the map.

The vans have the scenario's engine state (as their OBD adapter would give
it) but no IMU: the round gives them stops, idles, trips and GNSS harsh
events; the replay is checked for the markers the replay API says it should
have, one per harsh event and one per idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.storage import BridgeStore
from simulators.broker import Mosquitto, free_port
from simulators.fleet import FleetResult, run_fleet
from simulators.postgres import PostgresServer
from simulators.stack import bridge_worker
from tests.support.bridge_api import api_up, create_token
from tests.support.browser import (
    HARSH,
    IDLE,
    TRACK,
    VEHICLE_OFFLINE,
    VEHICLE_ONLINE,
    BrowserPage,
    browser_missing,
    colour_blobs,
    colour_pixels,
    is_blank,
    open_page,
    wait_for,
)
from tests.support.waiting import until

pytestmark = pytest.mark.slow

VANS = 5
# As in cloud_bridge/static/app.js: the event types the replay marks on the map.
HARSH_TYPES = {"harsh_acceleration", "harsh_braking", "harsh_cornering", "impact"}
IDLE_TYPES = {"idle_start", "excessive_idle", "idle_end"}
# A vehicle marker's fill is about 117 px. The labels' text has the offline colour too
# (--ink-3): anti-aliased it matches no pixel today, but a font's stems could pass the
# helper's 12 px, so only patches of marker size count.
MARKER_MIN_PX = 60


@dataclass
class Fleet:
    base: str
    token: str
    api: httpx.Client
    result: FleetResult

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer) -> Iterator[Fleet]:
    """A bridge on PostgreSQL holding one round of five vans, all of them stored."""
    missing = browser_missing()
    if missing:
        pytest.fail(missing)  # Chromium and playwright are dependencies: not a skip
    workdir = tmp_path_factory.mktemp("live_view")
    url = pg_server.create_database("live_view")
    token = create_token(url, "live-view")
    broker = Mosquitto(workdir / "broker").start()
    http_port = free_port()
    store = BridgeStore(url)
    bridge = None
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{http_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    try:
        bridge = bridge_worker(
            url,
            broker.port,
            workdir / "bridge.log",
            client_id="bridge-live-view",
            http_port=http_port,
        )
        until(lambda: api_up(api), "the bridge's API", 20)
        # One whole round (no `minutes`, ~1 s to generate): four vans finish a trip in it
        # (a 5-min stop ends one), three of those trips with harsh events.
        result = run_fleet(
            "127.0.0.1", broker.port, VANS, workdir / "fleet", until_delivered_timeout=30
        )
        assert result.all_delivered, result.to_json()
        sent = {
            d.device: (d.records["telemetry"], d.records["events"], d.last_seq)
            for d in result.devices
        }

        def stored() -> bool:
            held = {
                s["device"]: (s["positions"], s["events"], s["seq_max"])
                for s in store.summary()
                if s["status"] == "offline"  # the stopped vans' last word, retained
            }
            return held == sent

        until(stored, "every record the vans sent, and their offline status, stored", 30)
        yield Fleet(f"http://127.0.0.1:{http_port}", token, api, result)
    finally:
        api.close()
        if bridge is not None:
            bridge.stop()
        broker.stop()
        store.close()


def _richest_trip(fleet: Fleet) -> dict[str, Any]:
    """The replay (API answer) with the most harsh and idle events; the lowest id on a tie."""
    best: dict[str, Any] | None = None
    best_key = (0, 0)
    for van in sorted(d.device for d in fleet.result.devices):
        for trip in fleet.get(f"/api/v1/devices/{van}/trips")["trips"]:
            replay = fleet.get(f"/api/v1/trips/{trip['id']}/replay")
            marked = sum(e["type"] in HARSH_TYPES | IDLE_TYPES for e in replay["events"])
            if (marked, -trip["id"]) > best_key:
                best, best_key = replay, (marked, -trip["id"])
    assert best is not None, "no finished trip with harsh or idle events in the round"
    return best


def _body(page: BrowserPage, key: str) -> str | None:
    value = page.page.evaluate(f"() => document.body.dataset.{key} ?? null")
    return None if value is None else str(value)


def _still_map(bp: BrowserPage, path: Path, timeout: float = 10.0) -> Path:
    """Screenshot ``#map`` once two captures in a row agree: Leaflet's zoom/pan has ended."""
    previous = b""

    def settled() -> bool:
        nonlocal previous
        png = bp.screenshot(path, "#map").read_bytes()
        same, previous = png == previous, png
        return same

    until(settled, f"the map to stop moving ({path.name})", timeout)
    return path


def test_live_view_shows_the_fleet_its_events_and_a_trip_replay(
    fleet: Fleet, tmp_path: Path, figures: list[str]
) -> None:
    vans = sorted(d.device for d in fleet.result.devices)
    devices = fleet.get("/api/v1/devices")["devices"]
    assert sorted(d["device"] for d in devices) == vans
    assert not any(d["online"] for d in devices), "the fleet has stopped: every van is offline"
    events = fleet.get("/api/v1/events", limit=10_000)["events"]
    assert len(events) == sum(d.records["events"] for d in fleet.result.devices)
    assert len(events) <= 200, "the page's first events poll reads 200: all of them here"
    replay = _richest_trip(fleet)
    trip = replay["trip"]
    harsh = [e for e in replay["events"] if e["type"] in HARSH_TYPES]
    # One marker per idle episode: its idle_start, excessive_idle and idle_end share data.start.
    rank = {"idle_start": 0, "excessive_idle": 1, "idle_end": 2}
    episodes: dict[str, dict[str, Any]] = {}
    for e in replay["events"]:
        if e["type"] in IDLE_TYPES:
            key = e["data"].get("start") or e["ts"]
            if key not in episodes or rank[e["type"]] > rank[episodes[key]["type"]]:
                episodes[key] = e
    idle = list(episodes.values())
    requests: list[str] = []

    with open_page() as bp:
        page = bp.page
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"{fleet.base}/#token={fleet.token}")
        wait_for(page, "document.body.dataset.ready === '1'", 15)
        wait_for(page, f"document.body.dataset.events === '{len(events)}'", 15)
        assert "token" not in page.url, "the token is taken out of the address bar"

        # Vehicles: a marker and a list item per van.
        assert _body(bp, "vehicles") == str(VANS)
        listed = page.eval_on_selector_all(
            "#vehicle-list li", "els => els.map(e => e.dataset.testid)"
        )
        assert listed == [f"vehicle-{v}" for v in vans]
        # The feed: every stored event, by its id.
        shown = page.eval_on_selector_all("#event-feed li", "els => els.map(e => e.dataset.testid)")
        assert sorted(shown) == sorted(f"event-{e['id']}" for e in events)

        # The map with no tiles: drawn, one grey marker per (offline) van, nothing fetched.
        fleet_png = _still_map(bp, tmp_path / "fleet.png")
        assert not is_blank(fleet_png)
        assert colour_blobs(fleet_png, VEHICLE_OFFLINE, min_pixels=MARKER_MIN_PX) == VANS
        assert colour_blobs(fleet_png, VEHICLE_ONLINE, min_pixels=MARKER_MIN_PX) == 0
        assert _body(bp, "tiles") == "0" and page.locator(".leaflet-tile").count() == 0
        assert [u for u in requests if not u.startswith((fleet.base, "data:"))] == []

        # Replay: choose the van, then its trip, as a user does.
        page.get_by_test_id("replay-vehicle").select_option(trip["device"])
        page.get_by_test_id(f"trip-{trip['id']}").click()
        wait_for(page, f"document.body.dataset.replay === '{trip['id']}'", 15)
        drawn = page.evaluate(
            "() => { const r = window.liveView.replay;"
            " return {harsh: r.harsh, idle: r.idle, positions: r.positions}; }"
        )
        assert drawn == {
            "harsh": len(harsh),
            "idle": len(idle),
            "positions": len(replay["positions"]),
        }
        for e in harsh + idle:
            assert page.get_by_test_id(f"replay-event-{e['id']}").count() == 1, e
        replay_png = _still_map(bp, tmp_path / "replay.png")
        track_px = colour_pixels(replay_png, TRACK)
        harsh_blobs = colour_blobs(replay_png, HARSH)
        idle_blobs = colour_blobs(replay_png, IDLE)
        assert track_px > 1500, track_px
        assert harsh_blobs == len(harsh)
        assert idle_blobs == len(idle)
        bp.assert_no_errors()

    figures.append(
        f"live view: {VANS} vans, {len(events)} events in the feed, trip {trip['id']} of "
        f"{trip['device']}: {len(replay['positions'])} positions, {track_px} track px, "
        f"{harsh_blobs} harsh and {idle_blobs} idle markers (screenshots in {tmp_path})"
    )


def test_a_wrong_token_shows_the_token_form_and_the_right_one_opens_the_view(
    fleet: Fleet,
) -> None:
    with open_page() as bp:
        page = bp.page
        page.goto(f"{fleet.base}/#token=not-a-token")
        wait_for(page, "!document.getElementById('token-modal').hidden", 15)
        assert page.get_by_test_id("token-form").is_visible()
        assert "refused" in (page.locator("#token-reason").text_content() or "")
        assert _body(bp, "ready") is None
        assert page.locator("#vehicle-list li").count() == 0

        page.get_by_test_id("token-input").fill(fleet.token)
        page.get_by_test_id("token-input").press("Enter")
        wait_for(page, "document.body.dataset.ready === '1'", 15)
        assert not page.get_by_test_id("token-form").is_visible()
        assert _body(bp, "vehicles") == str(VANS)
        # Chromium logs the refused request itself; nothing else may fail.
        bp.assert_no_errors(allow=["status of 401"])
