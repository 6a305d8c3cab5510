"""`pigeon tune`: search training options with Optuna; every trial is an ordinary pigeon run.

TPE proposes each trial's options; a pruner (median, or successive halving) fed by every epoch's validation
score stops unpromising trials early (through the engine's events hook: the run ends cleanly after that epoch
and says so in its summary.json). The study lives in SQLite under the study folder, so running the same command
again continues an interrupted study. Selection is on the validation split only; at the end the best options
are written as a config file (best.yaml / best.json, usable with `pigeon train --config`), plotted
(history.png, importance.png) and trained once more, and that run's test score is reported.

    runs/tune/<name>/
      study.db              Optuna's storage (SQLite)
      trials/trial-NNN/     one ordinary run folder per trial (config.json, results.csv, summary.json, weights/)
      best.yaml, best.json  the best options found, as a config file
      history.png           each trial's validation score and the best so far
      importance.png        how much each searched option mattered (PED-ANOVA)
      final/                the best options trained once more (with plots); its test score is the result
      tune.json, tune.md    every trial, the best, the final run
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pigeon.config import TrainConfig, _check_choice, _check_range, build
from pigeon.errors import ConfigError, did_you_mean

PRUNERS = ("median", "halving", "none")
DEFAULT_SPACE = "lr,weight_decay,label_smoothing"
# Options the study sets for each trial itself; the rest of TrainConfig is the base every trial starts from.
SET_BY_TUNE = ("data", "time", "project", "name", "exist_ok", "resume", "plots", "verbose")


def parse_duration(text: str) -> float:
    """'1h', '30m', '90s', '1h30m' or a plain number of hours -> seconds."""
    value = str(text).strip().lower()
    try:
        return float(value) * 3600
    except ValueError:
        pass
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or not parts or not any(parts.groups()):
        raise ConfigError(f"time={text!r} is not a duration; write e.g. 1h, 30m, 90s, 1h30m or a number of hours")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


def _lr(trial: Any, base: TrainConfig, native: int) -> float:
    lo, hi = (1e-2, 0.5) if base.optimizer == "sgd" else (1e-4, 1e-2)
    return float(trial.suggest_float("lr", lo, hi, log=True))


def _weight_decay(trial: Any, base: TrainConfig, native: int) -> float:
    lo, hi = (1e-5, 1e-2) if base.optimizer == "sgd" else (1e-3, 0.3)
    return float(trial.suggest_float("weight_decay", lo, hi, log=True))


def _epochs(base: TrainConfig) -> int:
    from pigeon.engine.recipe import recipe_for

    return base.epochs or recipe_for(base.device, base.amp).epochs


def imgsz_choices(native: int) -> list[int]:
    return sorted({min(1024, max(8, round(native * f))) for f in (0.5, 1.0, 1.5, 2.0)})


SPACE: dict[str, Any] = {
    "lr": _lr,
    "weight_decay": _weight_decay,
    "label_smoothing": lambda t, b, n: t.suggest_float("label_smoothing", 0.0, 0.3),
    "batch": lambda t, b, n: t.suggest_categorical("batch", [32, 64, 128, 256]),
    "model": lambda t, b, n: t.suggest_categorical("model", ["pigeon-n", "pigeon-s", "pigeon-m"]),
    "imgsz": lambda t, b, n: t.suggest_categorical("imgsz", imgsz_choices(n)),
    "epochs": lambda t, b, n: t.suggest_int("epochs", max(1, _epochs(b) // 2), _epochs(b) * 2),
}
SPACE_HELP = {"lr": "log-uniform 0.01-0.5 (sgd) or 1e-4-1e-2 (adamw)",
              "weight_decay": "log-uniform 1e-5-1e-2 (sgd) or 1e-3-0.3 (adamw)",
              "label_smoothing": "uniform 0-0.3", "batch": "32, 64, 128 or 256", "model": "pigeon-n, -s or -m",
              "imgsz": "0.5x, 1x, 1.5x or 2x the data's (or --imgsz's) size",
              "epochs": "an integer from half to twice --epochs (or the recipe's)"}


@dataclass(frozen=True)
class TuneConfig:
    """`pigeon tune`; `train` holds the base training options (any TrainConfig field but SET_BY_TUNE)."""

    data: str
    time: str | None = None
    trials: int | None = None
    space: str = DEFAULT_SPACE
    pruner: str = "median"
    final: bool = True
    project: str = "runs/tune"
    name: str | None = None
    verbose: bool = True
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value, kind in (("data", self.data, str), ("time", self.time, (str, type(None))),
                                  ("trials", self.trials, (int, type(None))), ("space", self.space, str),
                                  ("pruner", self.pruner, str), ("train", self.train, dict)):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} has the wrong type")
        if not self.data:
            raise ConfigError("data is required: a folder of images or a built-in name (see `pigeon datasets`)")
        if self.time is None and self.trials is None:
            raise ConfigError("give a budget: time (e.g. --time 1h) and/or trials (e.g. --trials 20)")
        if self.time is not None:
            _check_range("time", self.seconds, 0.0, lo_open=True)
        _check_range("trials", self.trials, 1)
        _check_choice("pruner", self.pruner, PRUNERS)
        for name in self.space_names:
            if name not in SPACE:
                raise ConfigError(f"space: {name!r} cannot be searched{did_you_mean(name, SPACE)}; choose from "
                                  f"{', '.join(SPACE)}")
        if not self.space_names:
            raise ConfigError(f"space is empty; name options to search, e.g. {DEFAULT_SPACE}")
        for key in self.train:
            if key in SET_BY_TUNE:
                raise ConfigError(f"{key!r} is set by tune for each trial; "
                                  + ("use tune's own --time budget" if key == "time" else "drop it"))
        self.base()  # validates the base options now, naming any bad one

    @property
    def seconds(self) -> float | None:
        return None if self.time is None else parse_duration(self.time)

    @property
    def space_names(self) -> list[str]:
        return [s.strip() for s in self.space.split(",") if s.strip()]

    def base(self) -> TrainConfig:
        return build(TrainConfig, data=self.data, **self.train)


@dataclass(frozen=True)
class TuneResult:
    dir: Path
    best_params: dict[str, Any]
    best_value: float  # the best trial's validation score (select metric; -loss for loss)
    best_config: Path  # best.yaml (or best.json without PyYAML)
    final: Any  # TrainResult of the best options trained once more, or None with final=False
    trials: list[dict[str, Any]]


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("pigeon tune needs Optuna: pip install 'pigeon[tune]'") from None
    return optuna


def _settings(cfg: TuneConfig) -> dict[str, Any]:
    return {"data": cfg.data, "space": cfg.space_names, "pruner": cfg.pruner, "train": cfg.train}


def _score(report: dict[str, Any], metric: str) -> float:
    return -float(report["loss"]) if metric == "loss" else float(report[metric])


def _pruner(optuna: Any, name: str) -> Any:
    if name == "median":
        # Against the median of earlier trials at the same epoch, once two trials have finished. Never at epoch 1:
        # that epoch is mostly learning-rate warmup, and its ranking says little about the end.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)  # first rung at epoch 2
    return optuna.pruners.NopPruner()


def _open_study(optuna: Any, cfg: TuneConfig, study_dir: Path, base: TrainConfig) -> Any:
    settings_path = study_dir / "settings.json"
    resumed = (study_dir / "study.db").is_file()
    if resumed and settings_path.is_file():
        saved = json.loads(settings_path.read_text())
        if saved != json.loads(json.dumps(_settings(cfg))):
            changed = sorted(k for k in saved if saved[k] != json.loads(json.dumps(_settings(cfg)))[k])
            raise ConfigError(f"{study_dir} holds a study with other settings ({', '.join(changed)} differ); "
                              "continue it with the same options, or start a new one with --name")
    study_dir.mkdir(parents=True, exist_ok=True)
    from pigeon.io import write_json

    write_json(settings_path, _settings(cfg))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="pigeon", storage=f"sqlite:///{(study_dir / 'study.db').absolute()}", load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=_pruner(optuna, cfg.pruner))
    # A trial still "running" in the storage belongs to a process that was killed: it will never report.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    if resumed and cfg.verbose:
        done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
        print(f"continuing the study in {study_dir}: {done} trial(s) already finished")
    return study


def native_size(base: TrainConfig) -> int:
    """The size searching imgsz scales: --imgsz, else what the data resolves to (a square: folders and built-ins
    resolve to one)."""
    if isinstance(base.imgsz, tuple):
        raise ConfigError(f"searching imgsz scales one square size, not {base.imgsz[0]}x{base.imgsz[1]}; drop imgsz "
                          "from --space to tune the rest at this HEIGHTxWIDTH, or give a square --imgsz")
    if base.imgsz:
        return base.imgsz
    from pigeon.data import load_dataset

    ds = load_dataset(base.data, imgsz=None, channels=base.channels, resize=base.resize, cache_dir=base.cache_dir,
                      verbose=False)
    return int(ds.preprocess.imgsz)


def tune(cfg: TuneConfig) -> TuneResult:
    """Run (or continue) a study; see the module docstring for what it writes."""
    from pigeon import tracking
    from pigeon.engine.train import StopRun
    from pigeon.engine.train import train as run_training

    optuna = _import_optuna()
    base = cfg.base()
    where = Path(cfg.data)  # a labels CSV names its study after its folder, as training names its run
    slug = re.sub(r"[^\w.-]+", "_", (where.parent.name if where.suffix.lower() == ".csv" else where.name) or cfg.data)
    study_dir = Path(cfg.project) / (cfg.name or slug)
    study = _open_study(optuna, cfg, study_dir, base)
    native = native_size(base) if "imgsz" in cfg.space_names else 0
    budget = cfg.seconds
    t0 = time.perf_counter()
    say = print if cfg.verbose else (lambda *a, **k: None)
    say(f"tuning {', '.join(cfg.space_names)} on {cfg.data} ({cfg.pruner} pruner, budget "
        + ", ".join(x for x in ((f"{cfg.time}" if cfg.time else ""), (f"{cfg.trials} trials" if cfg.trials
                                else "")) if x) + f") -> {study_dir}")

    select = _select(base)

    def objective(trial: Any) -> float:
        params = {name: SPACE[name](trial, base, native) for name in cfg.space_names}
        options = {**base.to_dict(), **params, "project": str(study_dir / "trials"),
                   "name": f"trial-{trial.number:03d}", "exist_ok": True, "plots": False, "verbose": False}
        if budget is not None:  # no trial may run past the study's end: the last one fits what is left
            left = budget - (time.perf_counter() - t0)
            options["time"] = max(left, 1.0) / 3600
        trial_cfg = build(TrainConfig, **options)
        state: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "start":
                trial.set_user_attr("run_dir", event["run_dir"])
            if event["event"] != "epoch":
                return
            key = f"val_{select}"
            if event.get(key) is None:
                raise ConfigError(f"tune selects on a validation split only, and {cfg.data} has none: set "
                                  "--val-fraction > 0 or give the data a val/ folder")
            value = -float(event[key]) if select == "loss" else float(event[key])
            trial.report(value, int(event["epoch"]))
            if trial.should_prune():
                state["pruned"] = int(event["epoch"])
                raise StopRun(f"pruned by tune ({cfg.pruner} pruner) after epoch {event['epoch']}: "
                              f"val {select} {event[key]:.4f}")

        with tracking.open_trackers(trial_cfg, on_event) as events:
            result = run_training(trial_cfg, events)
        value = _score(result.val, select) if result.val else -math.inf
        trial.set_user_attr("epochs", result.epochs)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        if "pruned" in state:
            say(f"trial {trial.number}: {shown} -> pruned after epoch {state['pruned']}")
            raise optuna.TrialPruned()
        say(f"trial {trial.number}: {shown} -> val {select} {abs(value):.4f} ({result.seconds:.0f}s)")
        return value

    complete_before = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    try:
        study.optimize(objective, n_trials=cfg.trials, timeout=budget, catch=())
    except KeyboardInterrupt:
        say(f"interrupted: the study is saved in {study_dir}; run the same command again to continue it")
        raise
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"no trial finished within the budget ({len(complete) - complete_before} completed); "
                          "give more time or fewer epochs")
    return _report(cfg, study, study_dir, base, time.perf_counter() - t0)


def _select(base: TrainConfig) -> str:
    """The metric trials are scored on: a multi-label run reads "top1" as map, as training does (a labels CSV is
    multi-label unless told otherwise)."""
    multilabel = base.task == "multilabel" or (base.task == "auto" and Path(base.data).suffix.lower() == ".csv")
    return "map" if multilabel and base.select == "top1" else base.select


def _report(cfg: TuneConfig, study: Any, study_dir: Path, base: TrainConfig, seconds: float) -> TuneResult:
    select = _select(base)
    from pigeon import tracking
    from pigeon.configfile import write_config_file
    from pigeon.engine.train import train as run_training
    from pigeon.io import atomic_write_text, write_json

    best = study.best_trial
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in cfg.train.items() if v != defaults.get(k)}
    best_options = {"data": cfg.data, **given, **best.params}
    write_config_file(study_dir / "best.json", best_options)
    best_path = study_dir / "best.json"
    try:
        import yaml  # noqa: F401

        best_path = write_config_file(study_dir / "best.yaml", best_options)
    except ImportError:
        pass
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "epochs": t.user_attrs.get("epochs"), "run_dir": t.user_attrs.get("run_dir")}
              for t in study.get_trials(deepcopy=False)]
    plot_history(trials, select, study_dir / "history.png")
    plot_importance(study, study_dir / "importance.png")
    final = None
    if cfg.final:
        final_cfg = build(TrainConfig, **{**base.to_dict(), **best.params, "project": str(study_dir),
                                          "name": "final", "exist_ok": False, "verbose": cfg.verbose})
        with tracking.open_trackers(final_cfg) as events:
            final = run_training(final_cfg, events)
    summary = {"settings": _settings(cfg), "seconds": round(seconds, 1), "select": select,
               "best": {"number": best.number, "value": best.value, "params": best.params,
                        "config": str(best_path)},
               "final": None if final is None else {"run_dir": str(final.run_dir), "val": _brief(final.val),
                                                    "test": _brief(final.test)},
               "trials": trials}
    write_json(study_dir / "tune.json", summary)
    atomic_write_text(study_dir / "tune.md", markdown(summary))
    if cfg.verbose:
        print(markdown(summary))
        print(f"best options in {best_path} (`pigeon train --config {best_path}`); study in {study_dir}")
    return TuneResult(dir=study_dir, best_params=dict(best.params), best_value=float(best.value),
                      best_config=best_path, final=final, trials=trials)


def _headline(report: dict[str, Any]) -> str:
    return f"mAP {report['map']:.2%}" if "map" in report else f"top-1 {report['top1']:.2%}"


def _brief(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if report is None else {k: report[k] for k in ("n", "top1", "top5", "map", "macro_f1", "loss")
                                        if k in report}


def markdown(summary: dict[str, Any]) -> str:
    select = summary["select"]
    sign = -1 if select == "loss" else 1
    lines = [f"# Study on {summary['settings']['data']}", "",
             f"{len(summary['trials'])} trial(s) in {summary['seconds']:.0f} s, searching "
             f"{', '.join(summary['settings']['space'])}, selected on val {select}.", "",
             "| trial | state | val " + select + " | options |", "|---|---|---|---|"]
    for t in summary["trials"]:
        value = "-" if t["value"] is None else f"{sign * t['value']:.4f}"
        opts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"| {t['number']} | {t['state'].lower()} | {value} | {opts} |")
    best = summary["best"]
    lines += ["", f"Best: trial {best['number']}, val {select} {sign * best['value']:.4f}; options in "
              f"`{best['config']}`."]
    final = summary["final"]
    if final:
        test, val = final["test"], final["val"]
        lines.append(f"Trained once more ({final['run_dir']}): "
                     + (f"val {_headline(val)}; " if val else "")
                     + (f"test {_headline(test)} (the test split was not used to choose)." if test
                        else "the data has no test split."))
    return "\n".join(lines) + "\n"


def plot_history(trials: list[dict[str, Any]], select: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    from pigeon.plots import _save

    sign = -1 if select == "loss" else 1
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    done = [(t["number"], sign * t["value"]) for t in trials if t["state"] == "COMPLETE"]
    pruned = [t["number"] for t in trials if t["state"] == "PRUNED"]
    if done:
        ax.plot(*zip(*done), "o", color="C0", label="completed")
        best, running = [], None
        for n, v in done:
            running = v if running is None else (min(running, v) if select == "loss" else max(running, v))
            best.append((n, running))
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
    if pruned:
        low = min(v for _, v in done) if done else 0.0
        ax.plot(pruned, [low] * len(pruned), "x", color="grey", label="pruned (at the bottom)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {select}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_importance(study: Any, path: Path) -> Path:
    """Bars of PED-ANOVA importances; with too few finished trials to tell, a figure that says so."""
    from matplotlib.figure import Figure

    from pigeon.plots import _save

    optuna = _import_optuna()
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    importances: dict[str, float] = {}
    why = f"{finished} finished trial(s); it takes at least 2"
    if finished >= 2:
        # Optuna warns (rather than fails) when its answer is meaningless; that answer is not drawn.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        meaningless = [str(w.message) for w in caught if "importances will be equal" in str(w.message)]
        if meaningless:
            importances, why = {}, meaningless[0]
        else:
            why = "no searched option varied across the finished trials"
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel("importance (PED-ANOVA, normalized)")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"importance not available:\n{why}", ha="center", va="center", wrap=True)
    return _save(fig, path)


def run_tune(data: str, time: str | None = None, trials: int | None = None, space: str = DEFAULT_SPACE,
             pruner: str = "median", final: bool = True, project: str = "runs/tune", name: str | None = None,
             verbose: bool = True, **train_options: Any) -> TuneResult:
    """Build the config (refusing unknown options with the closest name) and run the study."""
    tune_fields = {f.name for f in dataclasses.fields(TuneConfig)} - {"train"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in train_options:
        if key not in train_fields:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, tune_fields | train_fields)}")
    cfg = TuneConfig(data=data, time=time, trials=trials, space=space, pruner=pruner, final=final,
                     project=project, name=name, verbose=verbose, train=dict(train_options))
    return tune(cfg)

