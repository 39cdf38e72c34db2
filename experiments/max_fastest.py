"""max: the fastest correct combination on this machine, measured beside every candidate.

`config.MAX_CANDIDATES` lists what `max` picks from; of those the model's device and dtype can
run, `phases.resolve` takes the fastest measured one (tuning.py: each candidate checked against
reference and timed once on this machine, the choice cached). This script measures `max` and
every candidate with the study's protocol in the same run, so the choice can be re-checked on
any machine.

Run: `python experiments/max_fastest.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from smallmind_torch.cli.experiment import experiment_main
from smallmind_torch.config import MAX_CANDIDATES

PRESET = "max"
DESCRIPTION = "fastest correct combination"
main = experiment_main(PRESET, DESCRIPTION,
                       extra_presets={f"candidate: {label}": opt for label, opt in MAX_CANDIDATES.items()})

if __name__ == "__main__":
    raise SystemExit(main())
