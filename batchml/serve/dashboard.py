"""The analysts' dashboard: a Panel app over the monitoring tables of one store. Its data (the
cache shared by all sessions) is ``dashboard_data``, its tabs ``dashboard_views``, its login ``login``.

Served by ``batchml dashboard`` or ``panel serve dashboards/monitor.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import date

import pandas as pd
import panel as pn

from batchml.serve.dashboard_data import shared_data
from batchml.serve.dashboard_views import (
    CSS,
    accuracy_over_time,
    class_mix,
    confusion_view,
    failed_view,
    gallery,
    models_view,
    overview,
    runs_view,
)
from batchml.serve.login import auth_provider
from batchml.store import Store

REFRESH_SECONDS = 30
ALL_MODELS = "all models"


def create_app(store: Store, refresh_seconds: int = REFRESH_SECONDS) -> pn.template.BaseTemplate:
    """One session's dashboard; its sidebar picks model version, date range and run."""
    pn.extension(raw_css=[CSS])
    data = shared_data(store)
    data.refresh()
    model = pn.widgets.Select(name="Model version", options=[ALL_MODELS])
    dates = pn.widgets.DateRangePicker(name="Committed between")
    run = pn.widgets.Select(name="Run")
    normalised = pn.widgets.Checkbox(name="Row-normalised confusion matrix")
    tick = pn.widgets.IntInput(value=0, visible=False)  # bumped when a periodic refresh finds news
    shown = data.stamp  # per session: the shared data may have been refreshed by another one

    def selected() -> pd.DataFrame:
        runs = data.runs
        if model.value != ALL_MODELS:
            runs = runs[runs.model_version == model.value]
        if dates.value:
            start, end = (d.isoformat() for d in dates.value)
            runs = runs[(runs.committed_at.str[:10] >= start) & (runs.committed_at.str[:10] <= end)]
        return runs

    def sync_options() -> None:
        runs = data.runs
        model.options = [ALL_MODELS, *sorted(runs.model_version.unique())]
        if dates.value is None and len(runs):
            dates.value = (date.fromisoformat(runs.committed_at.min()[:10]),
                           date.fromisoformat(runs.committed_at.max()[:10]))
        ids = list(selected().run_id[::-1])
        keep = run.value in ids
        run.options = ids
        if not keep:
            run.value = ids[0] if ids else None

    def refresh() -> None:
        nonlocal shown
        data.refresh()
        if data.stamp != shown:  # re-rendering unchanged views would flicker and reset scrolls
            shown = data.stamp
            sync_options()
            tick.value += 1

    sync_options()
    model.param.watch(lambda _: sync_options(), "value")
    dates.param.watch(lambda _: sync_options(), "value")

    def one_run(run_id, *_):
        runs = data.runs
        return runs[runs.run_id == run_id] if run_id else runs.iloc[0:0]

    def view(render, *deps):
        """A tab's content, computed only when the tab is shown, and an error box if it fails."""
        def guarded(*values):
            try:
                return render(*values)
            except Exception as exc:  # one broken view must not take the dashboard down
                return failed_view(exc)
        return pn.panel(pn.bind(guarded, *deps, tick), lazy=True)

    tabs = pn.Tabs(
        ("Overview", view(lambda *_: overview(data, selected()), model, dates)),
        ("Accuracy", view(lambda *_: accuracy_over_time(selected()), model, dates)),
        ("Confusion", view(lambda r, n, *_: confusion_view(one_run(r), n), run, normalised)),
        ("Confusion (range)", view(lambda n, *_: one_class_list(selected(), "confusion matrix") or
                                   confusion_view(selected(), n), normalised, model, dates)),
        ("Class mix", view(lambda *_: one_class_list(selected(), "class mix") or class_mix(selected()), model, dates)),
        ("Failures", view(lambda r, *_: gallery(data, r), run)),
        ("Models", view(lambda *_: models_view(store))),
        ("Runs", view(lambda r, *_: runs_view(data, r), run)),
        dynamic=True,  # render a tab when it is opened: the overview comes first and fast
    )
    if refresh_seconds:
        pn.state.add_periodic_callback(refresh, period=refresh_seconds * 1000)
    return pn.template.BootstrapTemplate(
        title="batchml monitoring",
        sidebar=[pn.pane.Markdown(f"**Store**  \n`{store.url()}`"), model, dates, run, normalised, tick],
        main=[tabs],
    )


def one_class_list(runs: pd.DataFrame, what: str):
    """None where the runs' models share one list of classes; else a note to pick a model: a range's
    counts add up only class by class."""
    lists = {tuple(c) for c in runs.get("classes", pd.Series(dtype=object)) if c is not None and len(c)}
    if len(lists) < 2:
        return None
    versions = ", ".join(sorted(runs.model_version.unique())[:5])
    return pn.pane.Markdown(f"These runs are of models with different classes ({versions}): pick one under "
                            f"*Model version* to see the {what} of a range.")


def exposure_warning(address: str, basic_auth: str | None) -> str | None:
    """A warning when the dashboard listens beyond this machine without a login."""
    if basic_auth or address in ("localhost", ""):
        return None
    try:
        if ipaddress.ip_address(address).is_loopback:
            return None
    except ValueError:  # a host name: reachable from wherever it resolves
        pass
    return (f"listening on {address} without --basic-auth: anyone who reaches this machine sees the monitoring "
            "data. Add --basic-auth and --cookie-secret, put it behind a proxy that logs users in, or listen on "
            "127.0.0.1")


def serve(store: Store, port: int = 5006, address: str = "127.0.0.1", refresh_seconds: int = REFRESH_SECONDS,
          basic_auth: str | None = None, cookie_secret: str | None = None, show: bool = False,
          allow_origins: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
    """Serve the dashboard until interrupted (``batchml dashboard``). ``allow_origins``: more
    host[:port] names browsers may reach it by (its DNS name, a reverse proxy); ``trusted_proxies``:
    the addresses whose ``X-Forwarded-For`` names the client the login throttle counts."""
    provider = auth_provider(basic_auth, cookie_secret, trusted_proxies)
    shared_data(store).refresh()  # read the history before the first visitor arrives
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *allow_origins]
    extra = {"auth_provider": provider} if provider else {}
    pn.serve(lambda: create_app(store, refresh_seconds), port=port, address=address, show=show,
             title="batchml monitoring", websocket_origin=origins, cookie_secret=cookie_secret,
             threaded=False, **extra)
