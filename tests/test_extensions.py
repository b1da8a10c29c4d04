"""The extension seam (lorebase/extension.py), from outside: a server with no application at
all, and one with a small application of a test's own (not the notes example), written into a
project directory of its own and loaded through APPS. Each thing an extension can add is shown
working over real HTTP, a real tasks process and the real `lorebase check`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorebase.extension import Extension

from .identity_support import Users, dedicated
from .lore import Lorebase, wait_for

TINY = textwrap.dedent('''
    """A test's own application: a mark per user, a queue, a scheduled task, a check."""
    from pathlib import Path

    from lorebase.chain import Route
    from lorebase.extension import CheckContext, Extension, Queue, Scheduled, TaskContext, user_tag
    from lorebase.http import Reply, Request, reply
    from lorebase.schema import Schema

    RAN = "tiny:ran"  # the users whose job ran
    TICKS = "tiny:ticks"  # how often the scheduled task ran


    def marks_key(user: str) -> str:
        return f"tiny:{user_tag(user)}"


    class Mark(Schema):
        pass


    async def mark(req: Request) -> Reply:
        user = req.session["user"]
        await req.app.db.call("INCR", marks_key(user))
        req.app.stats.flow("tiny_marks")
        await jobs.push(req.app.db, {"user": user})
        return reply(200, {})


    async def run_job(ctx: TaskContext, job: dict) -> str:
        await ctx.db.call("SADD", RAN, job["user"])
        return "marked"


    async def tick(ctx: TaskContext) -> str:
        await ctx.db.call("INCR", TICKS)
        return "ticked"


    async def forget(app, user: str) -> None:
        await app.db.call("DEL", marks_key(user))


    async def detail(app, user: str) -> dict:
        return {"marks": int(await app.db.call("GET", marks_key(user)) or 0)}


    def check(ctx: CheckContext) -> None:
        names = ctx.tails(marks_key)
        for name in ctx.each("tiny", names):
            if not ctx.exists(name) and ctx.drop_orphans(name, [marks_key(name)]):
                ctx.found(marks_key(name), f"marks of {name}, who does not exist", "deleted")
        ctx.count("marks", len(names))


    jobs = Queue("tiny", run_job)
    extension = Extension(
        "tiny",
        routes=[Route("POST", "/tiny/mark", mark, section="private", body=Mark)],
        on_destroy=[forget], checks=[check], user_detail=detail, queues=[jobs],
        schedule=[Scheduled("tiny_tick", 0.5, tick)], stats={"tiny_marks": "Marks made."},
        assets=Path(__file__).parent / "web", web=["tiny.js"], migrations=Path(__file__).parent / "migrations",
    )
''')


def project_with_tiny(base: Path) -> Path:
    project = base / "project"
    (project / "tinyapp" / "web").mkdir(parents=True)
    (project / "tinyapp" / "__init__.py").write_text(TINY)
    (project / "tinyapp" / "web" / "tiny.js").write_text("console.log('tiny');\n")
    (project / "tinyapp" / "migrations").mkdir()
    (project / "tinyapp" / "migrations" / "0001_tiny_flag.py").write_text(
        "def migrate(db):\n    db.set('tiny:flag', 'migrated')\n")
    return project


METRICS = "m" * 40  # GET /metrics with Authorization: Bearer <this>


def lorebase_cmd(lore: Lorebase, *args: str) -> subprocess.CompletedProcess[str]:
    """A command as an operator runs it, from the project's directory (no LOREBASE_PROJECT)."""
    env = lore.environ()
    cwd = env.pop("LOREBASE_PROJECT", None) or str(Path.cwd())
    return subprocess.run([sys.executable, "-m", "lorebase", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


# -- no application ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "bare", APPS="", ADMINS="ext_root@example.com") as lore:
        yield lore


def test_with_no_app_the_notes_routes_are_404_and_the_built_ins_serve(bare, mail):
    with Users(bare, mail) as made:
        api = made.session(made.new("ext_user", verified=True))
        r = api.request("GET", "/notes")
        assert (r.status_code, r.json()) == (404, {"error": "notfound"})
        r = api.post("/notes", {"text": "hi"}, csrf=True)
        assert (r.status_code, r.json()) == (404, {"error": "notfound"})
        assert api.request("GET", "/files").status_code == 200
        paths = httpx.get(f"{bare.url}/openapi.json").json()["paths"]
        assert "/files" in paths and "/auth/login" in paths and not any(p.startswith("/notes") for p in paths)
        assert httpx.get(f"{bare.url}/apps").json() == []  # the web client loads no app's files


def test_with_no_app_the_admin_detail_has_no_app_lines_and_check_passes(bare, mail):
    with Users(bare, mail) as made:
        made.new("ext_plain", verified=True)
        root = made.session(made.new("ext_root", verified=True))
        r = root.request("GET", "/admin/users/ext_plain")
        assert r.status_code == 200, r.text
        assert r.json()["extra"] == [] and "notes" not in r.json()
        assert root.request("GET", "/admin").status_code == 200
    done = lorebase_cmd(bare, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "notes" not in done.stdout.splitlines()[-1]


# -- an application of a test's own --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mail) -> Iterator[Lorebase]:
    project = project_with_tiny(Path(tmp_path_factory.mktemp("tinyproject")))
    with dedicated(tmp_path_factory, mail, "tiny", APPS="tinyapp", PROJECT=str(project),
                   ADMINS="t_root@example.com", CHECK_EVERY="0", METRICS_TOKEN=METRICS) as lore:
        yield lore


def test_an_app_route_sits_behind_the_gatekeeper_and_the_csrf_check(tiny, mail):
    anonymous = httpx.post(f"{tiny.url}/tiny/mark", json={})
    assert (anonymous.status_code, anonymous.json()["error"]) == (403, "nocookie")
    with Users(tiny, mail) as made:
        api = made.session(made.new("t_csrf", verified=True))
        r = api.post("/tiny/mark", {})
        assert r.status_code == 403, r.text  # no CSRF token
        assert api.post("/tiny/mark", {}, csrf=True).status_code == 200


def test_an_app_adds_its_line_to_the_admin_user_detail(tiny, mail):
    with Users(tiny, mail) as made:
        api = made.session(made.new("t_marked", verified=True))
        for _ in range(3):
            assert api.post("/tiny/mark", {}, csrf=True).status_code == 200
        root = made.session(made.new("t_root", verified=True))
        detail = root.request("GET", "/admin/users/t_marked").json()
        assert (detail["extra"], detail["marks"]) == (["marks"], 3)


def test_an_app_destroy_hook_removes_its_data_with_the_account(tiny, mail):
    redis = tiny.redis()
    with Users(tiny, mail) as made:
        user = made.new("t_leaving", verified=True)
        api = made.session(user)
        assert api.post("/tiny/mark", {}, csrf=True).status_code == 200
        assert redis.get("tiny:{t_leaving}") == "1"
        made.destroy(user)
    assert not redis.exists("tiny:{t_leaving}")


def test_an_app_queue_runs_its_jobs_in_the_tasks_process(tiny, mail):
    redis = tiny.redis()
    with Users(tiny, mail) as made:
        api = made.session(made.new("t_queued", verified=True))
        assert api.post("/tiny/mark", {}, csrf=True).status_code == 200
    wait_for(lambda: redis.sismember("tiny:ran", "t_queued"), 15, what="the job ran")
    assert redis.llen("{tiny}:queue") == 0


def test_an_app_scheduled_task_runs_once_per_period(tiny):
    redis = tiny.redis()
    wait_for(lambda: int(redis.get("tiny:ticks") or 0) >= 2, 15, what="two ticks")
    assert redis.hget("task:{tiny_tick}", "last")


def test_an_app_check_finds_and_repairs_its_keys(tiny):
    redis = tiny.redis()
    redis.set("tiny:{t_ghost}", "4")  # marks of nobody
    done = lorebase_cmd(tiny, "check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tiny:{t_ghost}: marks of t_ghost, who does not exist" in done.stdout.splitlines()
    assert " marks" in done.stdout.splitlines()[-1]
    assert redis.exists("tiny:{t_ghost}")  # reported only
    done = lorebase_cmd(tiny, "check", "--repair")
    assert "tiny:{t_ghost}: marks of t_ghost, who does not exist (deleted)" in done.stdout.splitlines()
    assert not redis.exists("tiny:{t_ghost}")


def test_an_app_migration_is_listed_applied_by_its_name_and_recorded_under_the_app(tiny):
    listed = lorebase_cmd(tiny, "migrations")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("  ")[0]: line.split("  ")[1] for line in listed.stdout.splitlines()}
    assert lines["tiny/0001_tiny_flag"] == "pending" and "0002_cluster_keys" in lines
    done = lorebase_cmd(tiny, "migrate", "0001_tiny_flag.py", "--apply")
    assert done.returncode == 0, done.stdout + done.stderr
    redis = tiny.redis()
    assert redis.get("tiny:flag") == "migrated"
    assert redis.hexists("migrations", "tiny/0001_tiny_flag")
    listed = lorebase_cmd(tiny, "migrations")
    assert "tiny/0001_tiny_flag  applied " in listed.stdout


def test_an_app_stats_flow_and_assets_are_served(tiny, mail):
    with Users(tiny, mail) as made:
        api = made.session(made.new("t_counted", verified=True))
        assert api.post("/tiny/mark", {}, csrf=True).status_code == 200
    r = httpx.get(f"{tiny.url}/apps/tiny/tiny.js")
    assert (r.status_code, r.text) == (200, "console.log('tiny');\n")
    assert httpx.get(f"{tiny.url}/apps/tiny/..%2Finit.py").status_code == 404
    assert httpx.get(f"{tiny.url}/apps/notes/app.js").status_code == 404
    assert httpx.get(f"{tiny.url}/apps").json() == [{"name": "tiny", "scripts": ["/apps/tiny/tiny.js"], "styles": []}]

    def counted() -> bool:
        text = httpx.get(f"{tiny.url}/metrics", headers={"authorization": f"Bearer {METRICS}"}).text
        return "lorebase_tiny_marks_total " in text and "lorebase_tiny_marks_total 0" not in text
    wait_for(counted, 15, what="the flow on /metrics")


def test_an_extension_names_its_web_files_inside_its_assets():
    with pytest.raises(ValueError, match="assets directory"):
        Extension("webless", web=["a.js"])
    for bad in ("../a.js", "sub/a.js", ".a.js", "a.html", "a.js/"):
        with pytest.raises(ValueError, match="web file"):
            Extension("badweb", assets=Path("."), web=[bad])
    assert list(Extension("good", assets=Path("."), web=["a.js", "b.min.css"]).web) == ["a.js", "b.min.css"]


# -- the tutorial's application, as docs/using/writing-an-app.md shows it -------------------

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial" / "myapp.py"


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory, mail) -> Iterator[Lorebase]:
    project = Path(tmp_path_factory.mktemp("tutorial")) / "project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text(TUTORIAL.read_text())
    (project / "config.py").write_text('APPS = ["myapp"]\n')  # as the page says
    with dedicated(tmp_path_factory, mail, "tutorial", PROJECT=str(project)) as lore:
        yield lore


def test_the_tutorial_app_serves_what_its_page_says(tutorial, mail):
    assert httpx.get(f"{tutorial.url}/hello").json() == {"error": "nocookie"}
    with Users(tutorial, mail) as made:
        user = made.new("tut_reader", verified=True)
        api = made.session(user)
        assert api.request("GET", "/hello").json() == {"hello": "tut_reader"}
        assert api.post("/bookmarks", {"url": "https://example.com/a"}, csrf=True).status_code == 200
        r = api.post("/bookmarks", {"url": "not a url"}, csrf=True)
        assert (r.status_code, r.json()) == (400, {"error": "validation", "path": "url"})
        saved = api.request("GET", "/bookmarks").json()
        assert [b["url"] for b in saved] == ["https://example.com/a"]
        r = api.post("/bookmarks/delete", {"url": "https://example.com/b"}, csrf=True)
        assert (r.status_code, r.json()) == (404, {"error": "notfound"})
        assert api.post("/bookmarks/delete", {"url": "https://example.com/a"}, csrf=True).status_code == 200
        assert api.post("/bookmarks", {"url": "https://example.com/c"}, csrf=True).status_code == 200
        made.destroy(user)
    assert not tutorial.redis().exists("myapp:bookmarks:{tut_reader}")
