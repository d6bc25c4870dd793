"""`nanochat-pl ladder`: the ablation ladder, from a bigram to today's nanochat GPT, one component a rung.

A rung is the rung before plus a few settings of the pretraining config (`changes`), and names the component they add,
the failure it answers and its source. Every rung trains the same tokens of the same data from the same seed; one is
trained again with another seed, and a change between rungs smaller than those two runs' spread reads as noise. Each
rung's whole config is written to `ladder/configs/<rung>.yaml` in the data home (train one alone with `nanochat-pl
fit --config` it) and runs as a speedrun stage: a rerun skips finished rungs and resumes an interrupted one. The report
card's ladder section (report.py) has the table and the plot.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from nanochat_pl.commands.speedrun import Stage, run_stages
from nanochat_pl.common import UserError, atomic_write_text, config_path, home_dir
from nanochat_pl.report import LADDER_FILE


@dataclass
class Rung:
    """One rung.

    Args:
        name: Its name in the table, the logs and its config's file.
        component: What it adds over the rung before.
        why: The failure that component answers, in a line.
        source: Where it comes from: a paper, a nanochat commit, nanochat's dev/LOG.md.
        changes: The settings it changes, by dotted key of the fit config ({model.init_args.architecture.smear:
            true}); null sets one back to the base config's.
    """

    name: str
    component: str
    why: str
    source: str
    changes: dict  # not dict[str, Any], whose values jsonargparse reads again: "2026" would become 2026


def ladder(
    base: str,
    rungs: list[Rung],
    common: dict | None = None,
    noise_rung: str | None = None,
    noise_seed: int = 1,
    trainer: dict[str, Any] | None = None,
    restart: bool = False,
) -> None:
    """Train every rung of the ladder (configs/cpu/ladder.yaml) and write the report card; run it again to resume.

    Args:
        base: The pretraining config every rung starts from.
        rungs: The rungs, the simplest first.
        common: Settings of every rung, by dotted key (steps, batch, ...).
        noise_rung: The rung trained a second time, with seed `noise_seed`, for the noise band; default the last.
        noise_seed: That second run's seed.
        trainer: Trainer settings every rung gets after its config (a trainer preset).
        restart: Forget what an earlier ladder in this data home did and train every rung again.
    """
    configs = rung_configs(base, common or {}, rungs)
    noise_rung = noise_rung or rungs[-1].name
    if noise_rung not in configs or noise_seed == configs[noise_rung].get("seed_everything"):
        raise UserError(f"noise_rung must name a rung ({noise_rung!r}), noise_seed differ from its seed ({noise_seed})")
    twin = f"{noise_rung}-seed{noise_seed}"
    configs[twin] = dict(configs[noise_rung], seed_everything=noise_seed)
    root, stages = home_dir() / LADDER_FILE.parent, []
    for name, config in configs.items():
        atomic_write_text(root / "configs" / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
        stages.append(Stage(name, "fit", str(root / "configs" / f"{name}.yaml"), runs=str(root / "runs" / name)))
    noise = [[noise_rung, configs[noise_rung].get("seed_everything")], [twin, noise_seed]]
    atomic_write_text(home_dir() / LADDER_FILE, json.dumps({"rungs": [asdict(r) for r in rungs], "noise": noise}))
    run_stages(stages, trainer, None, restart, root / "state.json")


def rung_configs(base: str, common: dict[str, Any], rungs: list[Rung]) -> dict[str, dict[str, Any]]:
    """Each rung's whole fit config: the base config with `common` and the changes of every rung up to its own."""
    config, settings, configs = yaml.safe_load(config_path(base).read_text()), dict(common), {}
    for rung in rungs:
        settings = {key: value for key, value in (settings | rung.changes).items() if value is not None}
        configs[rung.name] = copy.deepcopy(config)
        for key, value in settings.items():
            node, (*path, last) = configs[rung.name], key.split(".")
            for part in path:
                node[part] = node = node.get(part) or {}
                if not isinstance(node, dict):
                    raise UserError(f"rung {rung.name}: {key} is not a setting of {base}")
            node[last] = copy.deepcopy(value)  # a later key may change what is inside it
    return configs
