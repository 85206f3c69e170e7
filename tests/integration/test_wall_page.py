"""The TV page (``GET /wall``) in headless Chromium against a real worker, broker and Redis.

Two teams in two offices (plus a one-person team that must stay hidden) produce today's
calls, meetings and first uses of CRM functions, and two days of history for a streak and
personal bests. Once the API shows it all, each panel is loaded pinned
(``?panel=<name>&rotate=0``), its DOM dumped after the scripts ran and compared number by
number with the API (the page marks every figure with ``data-*`` attributes), and a
1920x1080 screenshot saved to ``test-artifacts/wall-<panel>.png``.

Chromium comes from Debian (``apt-get install chromium fonts-dejavu-core``); without it the
test fails rather than skips.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from factories import event
from kafka_tools import produce, produce_past_calls

from app.embedded import wait_until
from app.kafka import ensure_topics
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PANELS = ("boards", "teams", "achievements", "flags", "streaks")
ZONES = ("UTC", "Asia/Tokyo", "America/New_York", "Pacific/Auckland", "America/Los_Angeles")
BEN = '<b>Ben</b> & "Co"'  # must appear as text, never as markup
TEAM_NAMES = {"north": "North <Team>", "south": "South"}

ROSTER = [
    Profile(user_id="ana", display_name="Ana", team_id="north", office_id="berlin", role="rep"),
    Profile(user_id="ben", display_name=BEN, team_id="north", office_id="berlin", role="rep"),
    Profile(user_id="cem", display_name="Cem", team_id="north", office_id="berlin", role="rep",
            leaderboard_opt_out=True),
    Profile(user_id="dan", display_name="Dan", team_id="north", office_id="berlin", role="rep"),
    Profile(user_id="eve", display_name="Eve", team_id="south", office_id="sydney", role="rep"),
    Profile(user_id="fay", display_name="Fay", team_id="south", office_id="sydney", role="rep"),
    Profile(user_id="gus", display_name="Gus", team_id="south", office_id="sydney", role="rep"),
    Profile(user_id="ida", display_name="Ida", team_id="solo", office_id="berlin", role="rep"),
]
# Today: (user, type, how many, feature or None).
TODAY = [
    ("ana", "call", 11, None), ("ana", "meeting", 2, None), ("ana", "task", 1, "leads"),
    ("ben", "call", 6, None), ("ben", "meeting", 1, None), ("ben", "task", 1, "reports"),
    ("cem", "call", 12, None),  # opted out: counted for the team, never named
    ("dan", "call", 2, None), ("dan", "email", 1, None),
    ("eve", "call", 5, None), ("eve", "meeting", 3, None), ("eve", "task", 1, "accounts"),
    ("eve", "task", 1, "leads"), ("eve", "task", 1, "reports"),
    ("fay", "call", 3, None), ("gus", "meeting", 1, None), ("ida", "call", 2, None),
]
HISTORY = {"ana": {-2: 4, -1: 5}, "eve": {-1: 6}}  # calls on earlier days: streak, bests


def config_text(tz: ZoneInfo) -> str:
    return f"""\
timezone: {tz.key}
team_timezone: {tz.key}
periods: [day, week]
catch_up: 3d
kpis:
  calls: {{title: Calls, count: [call]}}
  meetings: {{title: Meetings, count: [meeting]}}
  activities: {{title: Activities, count: [call, meeting, email, task]}}
roles:
  rep: {{targets: {{calls: {{day: 4, week: 20}}, activities: {{day: 6}}}}}}
teams:
  north: {{name: "{TEAM_NAMES['north']}"}}
  south: {{name: {TEAM_NAMES['south']}}}
calendar:
  working_days: [monday, tuesday, wednesday, thursday, friday, saturday, sunday]
  holidays: []
achievements:
  - {{id: first_use, kind: first_use, flags: [accounts, leads, reports],
     title: "First use: {{flag}}", all_title: All 3 CRM flags collected}}
  - {{id: ten_calls_today, kind: threshold, kpi: calls, period: day, value: 10,
     title: 10 calls today}}
  - {{id: call_streak, kind: streak, kpi: calls, period: day, length: 2,
     title: 2-day call streak}}
  - {{id: best_call_day, kind: personal_best, kpi: calls, period: day,
     title: Best call day ever}}
privacy: {{names: names, min_group_size: 3}}
"""


def local_zone() -> ZoneInfo:
    """A timezone where it is now between 03:00 and 20:00, so "today" holds for the test."""
    for name in ZONES:
        if 3 <= datetime.now(ZoneInfo(name)).hour < 20:
            return ZoneInfo(name)
    raise AssertionError("no candidate zone has daytime now")  # impossible: they span 21 h


# ---- the DOM ------------------------------------------------------------------------------

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """Descendants (and self) with ``tag`` and these attributes (None: present at all);
        ``data_team="x"`` means ``data-team="x"``, ``class_`` a class among ``class``."""
        found = []
        for node in self.iter():
            if tag is not None and node.tag != tag:
                continue
            if all(_matches(node, name, value) for name, value in attrs.items()):
                found.append(node)
        return found

    def one(self, tag: str | None = None, **attrs: str | None) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)


def _matches(node: Node, name: str, value: str | None) -> bool:
    if name == "class_":
        return value in node.attrs.get("class", "").split()
    key = name.replace("_", "-")
    return key in node.attrs if value is None else node.attrs.get(key) == value


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# ---- Chromium -----------------------------------------------------------------------------

def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is needed for the wall test and was not found on PATH: install it "
                "with `apt-get install -y --no-install-recommends chromium fonts-dejavu-core`",
                pytrace=False)


def run_chromium(tmp_path: Path, url: str, *args: str, budget_ms: int = 5000) -> str:
    """Run headless Chromium on ``url``; return stdout. Console lines go to stderr and any
    uncaught script error there fails the test."""
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    uncaught = [line for line in console if "Uncaught" in line]
    assert not uncaught, f"script errors on {url}:\n" + "\n".join(uncaught)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def wall_url(settings: Settings, panel: str, **extra: str) -> str:
    query = {"panel": panel, "rotate": "0", "lang": "en-US", "recent": "3600", **extra}
    return f"{settings.web_url}/wall?{urllib.parse.urlencode(query)}"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# ---- the API ------------------------------------------------------------------------------

def get(settings: Settings, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(settings.web_url + path, timeout=15) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def ok(settings: Settings, path: str) -> Any:
    status, body = get(settings, path)
    assert status == 200, (path, status, body)
    return body


def feed(settings: Settings) -> list[dict[str, Any]]:
    return ok(settings, "/api/achievements?limit=100")["achievements"]


def shown(value: float) -> str:
    """A number as the page writes it with lang=en-US (Intl, at most one decimal)."""
    rounded = round(value, 1)
    return f"{int(rounded):,}" if rounded == int(rounded) else f"{rounded:,.1f}"


def settled(read: Callable[[], Any], quiet_s: float) -> Callable[[], bool]:
    """A predicate that holds once ``read()`` gave the same answer for ``quiet_s``."""
    last: dict[str, Any] = {}

    def check() -> bool:
        value = read()
        now = time.monotonic()
        if last.get("value") != value:
            last.update(value=value, since=now)
        return now - last["since"] >= quiet_s

    return check


# ---- the test -----------------------------------------------------------------------------

def test_wall_panels_show_the_api_figures(make_settings, worker_factory, tmp_path: Path) -> None:
    chromium_binary()  # fail early and clearly without a browser
    tz = local_zone()
    config = tmp_path / "pulse.yaml"
    config.write_text(config_text(tz))
    settings = make_settings(config=config, close_interval_s=1, session_timeout_s=6)
    ensure_topics(settings)
    write_profiles(settings, ROSTER)
    produce_past_calls(settings, HISTORY, tz, datetime.now(tz).date())
    now = datetime.now(UTC).isoformat()
    produce(settings, [
        (user.encode(), orjson.dumps(event(user, kind, occurred_at=now,
                                           **({"feature": feature} if feature else {}))))
        for user, kind, count, feature in TODAY for _ in range(count)])
    worker = worker_factory(settings)

    def board(kpi: str, team: str) -> list[tuple[str, float]]:
        status, body = get(settings, f"/api/leaderboard?kpi={kpi}&period=day&scope=team:{team}"
                                     "&limit=5")
        return [(e["name"], e["value"]) for e in body["entries"]] if status == 200 else []

    def rules() -> list[str]:
        return sorted(a["rule"] for a in feed(settings))

    wait_until(lambda: board("calls", "north") == [("Ana", 11), (BEN, 6), ("Dan", 2)], 60,
               "north's call board (without the opted-out Cem)", process=worker)
    wait_until(lambda: board("meetings", "south") == [("Eve", 3), ("Gus", 1)], 60,
               "south's meeting board", process=worker)
    wait_until(lambda: ok(settings, "/api/kpis/offices/berlin?period=day")["kpis"]["calls"][
        "value"] == 11 + 6 + 12 + 2 + 2, 60, "berlin's calls", process=worker)
    wanted = {"first_use": 6, "ten_calls_today": 2, "call_streak": 1}
    wait_until(lambda: all(rules().count(r) >= n for r, n in wanted.items())
               and "best_call_day" in rules(), 60, f"awards {wanted} and a best",
               process=worker)
    wait_until(settled(lambda: [a["achievement_id"] for a in feed(settings)], 2.0), 30,
               "no more awards arriving", process=worker)

    doms = {}
    for panel in PANELS:
        dom = parse(run_chromium(tmp_path, wall_url(settings, panel), "--dump-dom"))
        html = dom.one("html")
        body = dom.one("body")
        errors = [li.text() for li in dom.one(id="wall-errors").find_all("li")]
        assert html.get("data-errors") == "0" and not errors, f"{panel}: script errors {errors}"
        assert body.get("data-state") == "ready", f"{panel}: the page never got its data"
        assert body.get("data-panel") == panel
        doms[panel] = dom.one("section", id=f"panel-{panel}")
        leaked = re.findall(r"\b(?:null|undefined|NaN)\b|\[object Object\]",
                            doms[panel].text())
        assert not leaked, f"{panel}: {leaked} shown"
        assert re.fullmatch(r"updated \d\d:\d\d:\d\d", dom.one(id="status").text())
        assert re.fullmatch(r"\d\d:\d\d", dom.one(id="clock").text())
        if panel == "achievements":
            doms["page:achievements"] = dom

    # Unpinned, the wall rotates (every 4 s here, in Chromium's virtual time).
    rotating = parse(run_chromium(tmp_path, f"{settings.web_url}/wall?interval=4&lang=en-US",
                                  "--dump-dom", budget_ms=9000))
    turns = int(rotating.one("body").get("data-rotations") or 0)
    assert turns >= 1, "the wall did not rotate"
    assert rotating.one("body").get("data-panel") == PANELS[turns % len(PANELS)]

    check_boards(settings, doms["boards"])
    check_teams(settings, doms["teams"])
    check_achievements(settings, doms["achievements"], doms["page:achievements"])
    check_flags(settings, doms["flags"])
    check_streaks(settings, doms["streaks"])
    everything = " ".join(doms[p].text() for p in PANELS)
    assert "Cem" not in everything  # opted out: in team totals and awards, never by name
    assert "Ida" not in everything  # a one-person team stays private

    ARTIFACTS.mkdir(exist_ok=True)
    for panel in PANELS:
        target = ARTIFACTS / f"wall-{panel}.png"
        target.unlink(missing_ok=True)
        extra = {"motion": "0"} if panel == "achievements" else {"motion": "0", "celebrate": "0"}
        run_chromium(tmp_path, wall_url(settings, panel, **extra), f"--screenshot={target}",
                     "--window-size=1920,1080")
        assert target.exists(), f"no screenshot of {panel}"
        assert png_size(target) == (1920, 1080)
        assert target.stat().st_size > 30_000, f"{target} looks blank"


def value_of(node: Node) -> float:
    """A figure's raw value (data-value), checked against the text shown."""
    raw = node.get("data-value")
    assert raw is not None, f"a figure without data-value: {node}"
    assert node.text() == shown(float(raw)), (node.text(), raw)
    return float(raw)


def check_boards(settings: Settings, section: Node) -> None:
    boards = section.find_all("ol", data_board=None)
    seen = set()
    for board in boards:
        kpi, scope = board.get("data-board").split(":", 1)
        api = ok(settings, f"/api/leaderboard?kpi={kpi}&period=day&scope={scope}&limit=5")
        rows = [(int(li.get("data-rank")), li.one(data_field="name").text(),
                 value_of(li.one(data_field="value"))) for li in board.find_all("li")]
        assert rows == [(e["rank"], e["name"], e["value"]) for e in api["entries"]], board
        assert board.find_all("b") == []  # names are text, not markup
        seen.add(board.get("data-board"))
    # Two boards per team by default: KPIs with data, those with a target first.
    assert seen == {f"{kpi}:team:{team}" for kpi in ("calls", "activities")
                    for team in ("north", "south")}, seen
    assert BEN in section.text()
    for team, name in TEAM_NAMES.items():
        assert section.one("section", data_team=team).one("h2").text() == name
    assert section.find_all("section", data_team="solo") == []  # no board for one person
    assert section.one(data_placeholder="group_too_small").get("data-teams") == "solo"


def check_teams(settings: Settings, section: Node) -> None:
    checked = set()
    for scope, kind in (("team", "teams"), ("office", "offices")):
        for figure in section.find_all(**{f"data_{scope}": None, "data_field": None}):
            ident, kpi = figure.get(f"data-{scope}"), figure.get("data-kpi")
            period, what = figure.get("data-period"), figure.get("data-field")
            api = ok(settings, f"/api/kpis/{kind}/{ident}?period={period}")["kpis"][kpi]
            assert value_of(figure) == api[what], (scope, ident, kpi, period, what)
            checked.add((scope, ident, kpi, period, what))
    for scope, ident in (("team", "north"), ("team", "south"), ("office", "berlin"),
                         ("office", "sydney")):
        for period in ("day", "week"):
            assert (scope, ident, "calls", period, "value") in checked
            assert (scope, ident, "calls", period, "target") in checked
    assert ("team", "north", "activities", "day", "target") in checked
    assert not any(ident == "solo" for _, ident, *_ in checked)
    assert section.one("div", class_="veiled", data_team="solo").find_all(
        data_placeholder="group_too_small")
    north = ok(settings, "/api/kpis/teams/north?period=day")["kpis"]["calls"]
    assert (north["value"], north["target"]) == (31, 16)  # Cem counts, four reps' targets


def check_award(node: Node, award: dict[str, Any]) -> None:
    assert node.get("data-kind") == award["kind"]
    assert node.one(data_field="title").text() == award["title"]
    names = node.find_all(data_field="name")
    if award["name"] is None:
        assert names == []
        assert node.one(data_field="team").text() == "Team " + TEAM_NAMES[award["team_id"]]
    else:
        assert [n.text() for n in names] == [award["name"]]
        assert node.one(data_field="team").text() == TEAM_NAMES[award["team_id"]]


def check_achievements(settings: Settings, section: Node, page: Node) -> None:
    awards = feed(settings)
    items = section.one("ol", data_feed="achievements").find_all("li", data_achievement=None)
    assert [li.get("data-achievement") for li in items] == [
        a["achievement_id"] for a in awards[:7]]
    for item, award in zip(items, awards, strict=False):
        check_award(item, award)
    assert any(a["name"] is None and a["rule"] == "ten_calls_today" for a in awards)
    # Awards of the last hour (recent=3600) are celebrated once on load: the overlay is up.
    celebrated = [li.get("data-achievement") for li in page.one(id="celebrated").find_all("li")]
    assert celebrated and set(celebrated) <= {a["achievement_id"] for a in awards[:3]}
    overlay = page.one(id="celebration")
    assert "show" in overlay.get("class").split()
    assert overlay.get("data-achievement") in celebrated


def check_flags(settings: Settings, section: Node) -> None:
    flags = [a for a in feed(settings) if a["kind"] == "first_use"]
    for team in ("north", "south"):
        tally = section.one("li", data_flag_team=team)
        mine = [a for a in flags if a["team_id"] == team and a["period"] != "flag:*"]
        complete = [a for a in flags if a["team_id"] == team and a["period"] == "flag:*"]
        assert (tally.get("data-count"), tally.get("data-complete")) == (
            str(len(mine)), str(len(complete)))
        assert tally.one(class_="count").text() == str(len(mine))
        assert {c.get("data-flag") for c in tally.find_all(data_flag=None)} == {
            a["period"].removeprefix("flag:") for a in mine}
    south = section.one("li", data_flag_team="south")
    assert (south.get("data-count"), south.get("data-complete")) == ("3", "1")
    items = section.one("ol", data_feed="flags").find_all("li", data_achievement=None)
    assert [li.get("data-achievement") for li in items] == [
        a["achievement_id"] for a in flags[:8]]
    for item, award in zip(items, flags, strict=False):
        check_award(item, award)


def check_streaks(settings: Settings, section: Node) -> None:
    awards = feed(settings)
    streaks = [a for a in awards if a["kind"] == "streak"][:4]
    bests = [a for a in awards if a["kind"] == "personal_best"]
    expected = [*streaks, *bests][:8]
    cards = section.one(data_feed="streaks").find_all("div", data_achievement=None)
    assert [c.get("data-achievement") for c in cards] == [a["achievement_id"] for a in expected]
    for card, award in zip(cards, expected, strict=True):
        check_award(card, award)
        assert value_of(card.one(data_field="value")) == award["value"]
    streak = next(a for a in expected if a["kind"] == "streak")
    assert (streak["name"], streak["value"]) == ("Ana", 2)
