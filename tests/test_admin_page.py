"""The admin page (/admin), end to end in headless Chromium (Debian's, driven by Playwright) on
a lorebase of its own with ADMINS set, beat sampling every 0.2 s and no scheduled backup: an
admin logs in, searches and opens a user, disables them (that user's open session, an httpx
client, stops working), sends an invite (the mail reaches the SMTP sink), filters the logs and
tails them, sees charts with data in them and backs up. A non-admin, or nobody, sees a login
form or "not an admin" and the page never receives an admin reply. No page errors and no
Content Security Policy violations anywhere. Screenshots in test-artifacts/screens/."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response, expect

from .identity_support import Api, User, Users, assert_error, dedicated
from .lore import Lorebase, MailSink, wait_for
from .support import client_ip
from .web_support import Watched, chromium, shot

ROOT_NAME = "pg_root"


@pytest.fixture(scope="module")
def lore(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "adminpage", ADMINS=f"{ROOT_NAME}@example.com", BEAT_EVERY="0.2",
                   BACKUP_EVERY="0") as lore:
        yield lore


@pytest.fixture(scope="module")
def made(lore: Lorebase, mail: MailSink) -> Iterator[Users]:
    with Users(lore, mail) as users:
        yield users


@pytest.fixture(scope="module")
def root(made: Users) -> User:
    return made.new(ROOT_NAME, verified=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class AdminWatched(Watched):
    """A watched page that also keeps every reply of an /admin/ route it received."""

    def __init__(self, page: Page, ip: str):
        super().__init__(page, ip)
        self.admin_replies: list[tuple[str, int]] = []
        page.on("response", self._response)

    def _response(self, response: Response) -> None:
        if "/admin/" in response.url:
            self.admin_replies.append((response.url, response.status))

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.csp == [], self.csp


@pytest.fixture()
def watched(browser: Browser, lore: Lorebase) -> Iterator[AdminWatched]:
    ip = client_ip()
    context = browser.new_context(base_url=lore.url, extra_http_headers={"X-Real-IP": ip},
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # every confirmation: yes
    try:
        yield AdminWatched(page, ip)
    finally:
        context.close()


def log_in(page: Page, user: User) -> None:
    page.goto("/admin")
    login = page.locator("#login")
    expect(login).to_be_visible()
    login.locator("input[name=username]").fill(user.name)
    login.locator("input[name=password]").fill(user.password)
    login.locator("button[type=submit]").click()


def as_admin(page: Page, root: User) -> None:
    log_in(page, root)
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator("#who")).to_have_text(root.name)
    expect(page.locator("#users")).to_be_visible()


def flash(page: Page, text: str) -> None:
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("#flash")).to_have_text(text)


def local(moment: datetime.datetime) -> str:
    """A datetime-local input's value (the browser's zone is the machine's)."""
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def test_an_admin_searches_opens_and_disables_a_user_whose_open_session_stops_working(
        watched: AdminWatched, made: Users, root: User) -> None:
    page = watched.page
    target = made.new("pg_target_1", verified=True)
    made.new("pg_bystander_1")
    victim = made.session(target)
    assert victim.get("/auth/me").status_code == 200
    as_admin(page, root)

    search = page.locator("#user-search")
    search.locator("input[name=q]").fill("pg_target")
    search.locator("button[type=submit]").click()
    rows = page.locator("#users tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-username", "pg_target_1")
    search.locator("input[name=q]").fill("pg_")  # a prefix of all three
    search.locator("button[type=submit]").click()
    expect(rows).to_have_count(3)
    search.locator("input[name=q]").fill("pg_target")
    search.locator("button[type=submit]").click()
    expect(rows).to_have_count(1)
    shot(page, "admin-users")

    rows.first.locator("a.open").click()
    record = page.locator("#user-record")
    expect(record).to_contain_text("pg_target_1@example.com")
    created = record.locator("dt:text-is('Created') + dd")  # unix s: shown as today, not 1970
    expect(created).to_contain_text(str(datetime.date.today().year))
    expect(page.locator("#user-sessions")).to_contain_text(victim.ip)  # the session's address
    page.locator("#disable").click()
    flash(page, "pg_target_1 is disabled: their sessions ended.")
    expect(page.locator("#enable")).to_be_visible()
    expect(page.locator("#user-sessions")).to_have_text("No live session.")
    shot(page, "admin-user")
    assert_error(victim.get("/auth/me"), 403, "session")
    target.gone = True  # disabled: it cannot log in to destroy itself; the server goes at the end

    # acting on oneself: the API's 403 self, in words
    search_self = page.locator("#back-users")
    search_self.click()
    page.locator("#user-search input[name=q]").fill(ROOT_NAME)
    page.locator("#user-search button[type=submit]").click()
    page.locator(f"#users tr[data-username={ROOT_NAME}] a.open").click()
    page.locator("#disable").click()
    expect(page.locator("#flash")).to_have_text("You cannot do that to your own account: another admin has to "
                                                "(so the last admin cannot lock everyone out).")
    expect(page.locator("#disable")).to_be_visible()  # still enabled
    watched.clean()


def test_an_admin_sends_an_invite_that_arrives_by_mail_and_revokes_it(
        watched: AdminWatched, mail: MailSink, root: User) -> None:
    page = watched.page
    email = "pg_guest@example.com"
    as_admin(page, root)
    page.locator("#nav [data-go=invites]").click()
    invite = page.locator("#invite-form")
    invite.locator("input[name=email]").fill(email)
    invite.locator("button[type=submit]").click()
    flash(page, f"Invited {email}: the mail is on its way.")
    message = mail.wait_for(email, "invited")
    assert "/signup?invite=" in MailSink.text(message)
    row = page.locator(f"#invites tr[data-email='{email}']")
    expect(row).to_contain_text(ROOT_NAME)
    shot(page, "admin-invites")
    row.locator("button.revoke").click()
    flash(page, f"The invite of {email} is revoked.")
    expect(page.locator("#invites")).to_have_text("No pending invite.")
    watched.clean()


def test_an_admin_finds_an_event_by_text_type_and_time_and_the_tail_shows_new_ones(
        watched: AdminWatched, lore: Lorebase, root: User) -> None:
    page = watched.page
    marker = uuid.uuid4().hex[:12]
    with httpx.Client(base_url=lore.url, timeout=10) as client:
        assert client.get(f"/pg-missing-{marker}").status_code == 404  # one `reply` event
    as_admin(page, root)
    page.locator("#nav [data-go=logs]").click()
    filters = page.locator("#log-filters")
    now = datetime.datetime.now(datetime.UTC)
    filters.locator("input[name=type]").fill("reply")
    filters.locator("input[name=q]").fill(marker)
    filters.locator("input[name=since]").fill(local(now - datetime.timedelta(minutes=5)))
    filters.locator("input[name=until]").fill(local(now + datetime.timedelta(minutes=5)))
    filters.locator("button[type=submit]").click()
    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"/pg-missing-{marker}")
    expect(rows.first).to_contain_text("reply")
    # the same text in another type, or before the range: nothing
    filters.locator("input[name=type]").fill("signup")
    filters.locator("button[type=submit]").click()
    expect(page.locator("#logs-status")).to_have_text("0 events.")
    filters.locator("input[name=type]").fill("reply")
    filters.locator("input[name=until]").fill(local(now - datetime.timedelta(minutes=4)))
    filters.locator("button[type=submit]").click()
    expect(page.locator("#logs-status")).to_have_text("0 events.")
    filters.locator("input[name=until]").fill("")
    filters.locator("button[type=submit]").click()
    expect(rows).to_have_count(1)

    page.locator("#tail").check()
    with httpx.Client(base_url=lore.url, timeout=10) as client:
        assert client.get(f"/pg-missing-{marker}-later").status_code == 404
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text(f"/pg-missing-{marker}-later")  # newest on top
    shot(page, "admin-logs")
    page.locator("#tail").uncheck()
    watched.clean()


CHARTS = ["requests", "errors", "latency", "route-latency", "logins", "cpu", "memory", "disk", "redis-memory"]


def test_an_admin_sees_charts_with_data_in_them(watched: AdminWatched, lore: Lorebase, made: Users,
                                                root: User) -> None:
    page = watched.page
    with httpx.Client(base_url=lore.url, timeout=10) as client:
        for _ in range(20):
            assert client.get("/ping").status_code == 200
        assert client.get("/pg-missing-chart").status_code == 404
    admin = made.session(root)  # a login, counted

    def counted() -> bool:  # stats flush once a second, beat samples every 0.2 s
        stats = admin.get("/admin/stats").json()
        beat = admin.get("/admin/beat").json()
        return (sum(v for _, v in stats["requests"]) >= 20 and sum(v for _, v in stats["logins"]) >= 1
                and sum(v for _, v in stats["errors_4xx"]) >= 1
                and any(k.startswith("redis_used_memory|") and v for k, v in beat.items()))
    wait_for(counted, 15, 0.2, "the requests counted and beat sampled")

    as_admin(page, root)
    page.locator("#nav [data-go=charts]").click()
    for name in CHARTS:
        figure = page.locator(f"#chart-{name}")
        expect(figure.locator("canvas")).to_have_count(1)
        assert int(figure.get_attribute("data-points") or 0) > 0, name
    for name in ["requests", "errors", "logins", "memory", "disk", "redis-memory"]:
        assert float(page.locator(f"#chart-{name}").get_attribute("data-max") or 0) > 0, name
    expect(page.locator("#route option")).not_to_have_count(0)
    # the percent axes read as distinct ticks (not "24% / 24% / 24%" for a disk that barely
    # moves): uPlot keeps the labels it drew in each axis's `_values`
    for name in ["cpu", "memory", "disk"]:
        labels = page.evaluate("(id) => ui.charts.find((c) => c.root.parentNode.id === id).axes[1]._values",
                               f"chart-{name}")
        assert len(labels) >= 2 and len(set(labels)) == len(labels), (name, labels)
    # and a disk that barely moves (24.1 % to 24.3 %), drawn by the page's own chart code
    labels = page.evaluate("""async () => {
      const t = Date.now() / 1000;
      const made = chart('flat', 'Flat', {d: [[t - 120, 24.1], [t - 60, 24.2], [t, 24.3]]}, ['d'], ['vm'], percent,
        3600, PERCENT_AXIS);
      document.getElementById('charts').append(made.figure);
      made.draw();
      await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));  // uPlot draws in a frame
      return ui.charts[ui.charts.length - 1].axes[1]._values;
    }""")
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    shot(page, "admin-charts-hour")
    page.locator("#range").select_option("day")
    expect(page.locator("#range")).to_have_value("day")
    expect(page.locator("#chart-requests canvas")).to_have_count(1)
    assert float(page.locator("#chart-requests").get_attribute("data-max") or 0) >= 20
    shot(page, "admin-charts-day")
    watched.clean()


def test_an_admin_backs_up_now_and_sees_the_backup_listed(watched: AdminWatched, root: User) -> None:
    page = watched.page
    as_admin(page, root)
    page.locator("#nav [data-go=backups]").click()
    expect(page.locator("#backups")).to_have_text("No backup yet.")
    page.locator("#backup-now").click()
    flash(page, "Backup started: it is listed below once done.")
    expect(page.locator("#backups tbody tr")).to_have_count(1, timeout=30_000)
    expect(page.locator("#tasks tr[data-task=backup]")).to_contain_text("ok")
    shot(page, "admin-backups")
    watched.clean()


def test_a_non_admin_or_nobody_sees_the_login_form_or_not_an_admin_and_no_admin_data(
        watched: AdminWatched, made: Users) -> None:
    page = watched.page
    plain = made.new("pg_plain_1", verified=True)
    page.goto("/admin")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    log_in(page, plain)
    expect(page.locator("#not-admin")).to_have_text(
        "You are logged in as pg_plain_1, which is not an admin account. This page is for admins only.")
    expect(page.locator("#become-admin")).to_have_text(
        "To become one, run lorebase admin add pg_plain_1 on the server, then reload this page.")
    expect(page.locator("#to-app")).to_have_attribute("href", "/")
    expect(page.locator("#nav")).to_be_hidden()
    shot(page, "admin-not-admin")
    page.reload()  # a session that is not an admin's, from the start
    expect(page.locator("#not-admin")).to_be_visible()
    # the admin routes the page could call answer this session 403 admin, and it shows no data
    page.evaluate("() => fetch('/admin/users').then((r) => r.status)")
    assert watched.admin_replies, "the probe reached no admin route"
    assert all(status == 403 for _, status in watched.admin_replies), watched.admin_replies
    expect(page.locator("#users, #invites, #events, #charts, #backups")).to_have_count(0)
    page.locator("#logout-plain").click()
    expect(page.locator("#login")).to_be_visible()
    watched.clean()


def test_an_admin_whose_session_ends_is_back_at_the_login_form(watched: AdminWatched, made: Users,
                                                               root: User) -> None:
    page = watched.page
    as_admin(page, root)
    other = Api(made.lore).ok_login(root)
    try:
        assert other.post("/auth/sessions/end", {"others": True}, csrf=True).json()["ended"] >= 1
    finally:
        other.close()
    page.locator("#nav [data-go=invites]").click()
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#flash")).to_have_text("Your session ended. Please log in again.")
    expect(page.locator("#nav")).to_be_hidden()
    watched.clean()


# Every word of every table cell on the screen whose letters are not all on one line.
BROKEN_WORDS = """() => {
  const broken = [];
  for (const cell of document.querySelectorAll('main td, main th')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const word of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
        if (lines.size > 1) broken.push(word[0]);
      }
    }
  }
  return broken;
}"""


def test_the_tasks_and_users_tables_break_no_word_inside_a_cell_at_1280_and_375_px(
        watched: AdminWatched, made: Users, root: User) -> None:
    page = watched.page
    admin = made.session(root)
    if not admin.get("/admin/backups").json()["tasks"]:  # a task with a result, so the table has rows
        assert admin.post("/admin/backups", {}, csrf=True).status_code == 202
    wait_for(lambda: any(t.get("at") for t in admin.get("/admin/backups").json()["tasks"].values()), 30, 0.2,
             "a task's result")
    as_admin(page, root)
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto("/admin#backups")
        expect(page.locator("#tasks tbody tr").first).to_be_visible()
        assert page.evaluate(BROKEN_WORDS) == [], width
        shot(page, f"admin-tasks-{width}")
        page.goto("/admin#users")
        expect(page.locator("#users tbody tr").first).to_be_visible()
        assert page.evaluate(BROKEN_WORDS) == [], width
        shot(page, f"admin-users-{width}")
    watched.clean()


def test_each_admin_screen_has_its_own_address_that_back_and_reload_return_to(
        watched: AdminWatched, root: User) -> None:
    page = watched.page
    as_admin(page, root)
    assert page.url.endswith("/admin")  # the users screen, the default
    page.locator("#nav a[data-go=logs]").click()
    expect(page.locator("#events")).to_be_visible()
    assert page.url.endswith("/admin#logs")
    page.locator("#nav a[data-go=invites]").click()
    expect(page.locator("#invite-form")).to_be_visible()
    assert page.url.endswith("/admin#invites")
    page.go_back()
    expect(page.locator("#events")).to_be_visible()
    expect(page.locator("#nav a[data-go=logs]")).to_have_attribute("aria-current", "page")
    page.reload()
    expect(page.locator("#events")).to_be_visible()
    assert page.url.endswith("/admin#logs")
    page.locator("#nav a[data-go=users]").click()
    page.locator(f"#users tr[data-username={ROOT_NAME}] a.open").click()
    expect(page.locator("#user-record")).to_contain_text(f"{ROOT_NAME}@example.com")
    assert page.url.endswith(f"/admin#users/{ROOT_NAME}")
    page.reload()
    expect(page.locator("#user-record")).to_contain_text(f"{ROOT_NAME}@example.com")
    page.go_back()
    expect(page.locator("#users tbody tr").first).to_be_visible()
    assert page.url.endswith("/admin#users")
    watched.clean()


def test_a_first_visit_of_the_admin_page_and_the_web_client_logs_no_client_error_and_the_favicon_is_served(
        watched: AdminWatched, lore: Lorebase, made: Users, root: User) -> None:
    page = watched.page
    page.goto("/admin#charts")
    expect(page.locator("#login")).to_be_visible()
    shot(page, "admin-first-visit")
    page.goto("/#files")  # the web client's first visit asks the same question
    expect(page.locator("#login")).to_be_visible()
    marker = f"/pg-visit-done-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=lore.url, timeout=10, headers={"X-Real-IP": watched.ip}) as client:
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200, icon.text
        assert icon.headers["content-type"] == "image/svg+xml"
        assert icon.content.startswith(b"<svg")
        assert icon.headers["cache-control"] == "no-cache"
        again = client.get("/favicon.ico", headers={"If-None-Match": icon.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/static/favicon.svg").status_code == 200  # the page's <link rel=icon>
        assert client.get(marker).status_code == 404  # the one error of this address, logged last
    admin = made.session(root)

    def replies() -> list[dict[str, object]] | None:
        events = admin.get(f"/admin/logs?type=reply&q={watched.ip}").json()["events"]
        return events if any(e.get("path") == marker for e in events) else None
    logged = wait_for(replies, 15, 0.2, "the marker's reply in the log")
    assert [e["path"] for e in logged] == [marker], logged
