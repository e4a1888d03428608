"""The stages' flags: defined once in groups, one vocabulary, every value checked before any work."""

import dataclasses
import inspect
import json

import pytest

from dpo import DPOFlags, dpo
from inference import InferenceFlags, inference
from sft import SFTFlags, sft
from softmax_dpo import softmax_dpo
from dataprep.interaction_log import prepare_log
from dataprep.llara_files import to_text
from dataprep.llara_layout import prepare
from trainer.audit import audit_command
from trainer.baselines import RulesFlags, rules
from trainer.errors import InputError
from trainer.commands import OutputFlags, command, flag, flag_help
from trainer.flags import (CheckpointFlags, EvaluationDataFlags, LoraFlags, ModelFlags, OptimizationFlags, PromptFlags,
                           TrainingDataFlags)
from trainer.curves import curves
from trainer.preference_stage import PreferenceFlags
from trainer.results import results

STAGES = {sft: SFTFlags, softmax_dpo: PreferenceFlags, dpo: DPOFlags, inference: InferenceFlags, rules: RulesFlags}
GROUPS = (OutputFlags, TrainingDataFlags, EvaluationDataFlags, PromptFlags, ModelFlags, LoraFlags, OptimizationFlags,
          CheckpointFlags)


def documented_flags(entry) -> dict[str, str]:
    """flag -> help line, as fire reads them from the entry's docstring."""
    args = entry.__doc__.split("Args:\n", 1)[1]
    return dict(line.strip().split(": ", 1) for line in args.splitlines() if line.strip())


@pytest.mark.parametrize("entry", STAGES, ids=lambda entry: entry.__name__)
def test_every_flag_of_every_stage_has_its_default_and_help(entry):
    flags_class = STAGES[entry]
    parameters = inspect.signature(entry).parameters
    fields = {field.name: field for field in dataclasses.fields(flags_class)}
    assert list(parameters) == list(fields)
    assert {name: parameter.default for name, parameter in parameters.items()} == {
        name: field.default for name, field in fields.items()}
    assert documented_flags(entry) == {name: flag_help(flags_class, name) for name in fields}
    assert all(help_text.endswith(".") for help_text in documented_flags(entry).values())


def test_shared_flags_are_defined_once_and_read_alike_in_every_stage():
    for group in GROUPS:
        users = [flags_class for flags_class in STAGES.values() if issubclass(flags_class, group)]
        assert len(users) >= 2, f"{group.__name__} is shared"
        for field in dataclasses.fields(group):
            # The help a stage shows is the group's: a stage may change a default, never the meaning.
            assert {flag_help(flags_class, field.name) for flags_class in users} == {field.metadata["help"]}


def test_one_vocabulary_across_stages():
    for entry in STAGES:
        names = set(inspect.signature(entry).parameters)
        assert not names & {"sft_adapter", "resume_from_checkpoint", "num_negatives", "training_seed", "recency"}, \
            entry.__name__
    # --seed seeds training wherever it is a flag; the evaluation sample has its own name.
    assert "seed" not in inspect.signature(inference).parameters
    assert {"seed", "sample_seed"} <= set(inspect.signature(rules).parameters)
    for entry in (sft, softmax_dpo, dpo, inference):
        assert "adapter" in inspect.signature(entry).parameters
    # Groups come first, data before the model, each stage's own flags last.
    assert list(inspect.signature(sft).parameters)[:3] == ["output_dir", "train_file", "valid_file"]
    parameters = list(inspect.signature(softmax_dpo).parameters)
    own = parameters[parameters.index("adapter"):]
    assert own[:2] == ["adapter", "loss_type"] and set(own) <= set(vars(PreferenceFlags)["__annotations__"])


def test_stages_change_defaults_not_help():
    assert (SFTFlags.learning_rate, PreferenceFlags.learning_rate) == (1e-4, 1e-5)
    assert (PreferenceFlags.gradient_accumulation_steps, PreferenceFlags.num_train_epochs) == (8, 3.0)
    assert (DPOFlags.loss_type, DPOFlags.neg_num, DPOFlags.output_dir) == ("dpo", 1, "output/dpo")
    assert flag_help(DPOFlags, "neg_num") == flag_help(PreferenceFlags, "neg_num")
    assert dpo.__doc__.startswith("Pairwise DPO") and softmax_dpo.__doc__.startswith("Preference-train")


@pytest.mark.parametrize("entry, flags, message", [
    (softmax_dpo, {"neg_num": "3x"}, "--neg_num: expected int, got '3x'"),
    (softmax_dpo, {"beta": 0.0}, "--beta must be above 0"),
    (softmax_dpo, {"neg_num": 0}, "--neg_num must be at least 1"),
    (softmax_dpo, {"loss_type": "ipo"}, "--loss_type: expected one of"),
    (softmax_dpo, {"negatives": "hinted"}, "--negatives hinted ranks the candidates by the counts of --hint_file"),
    (softmax_dpo, {"target_margin": 0.5}, r"--target_margin: sdpo has no target margin \(only \['simpo_sdpo'\] do\)"),
    (softmax_dpo, {"loss_type": "listwise", "boundary_negatives": True},
     "--boundary_negatives and --dynamic_beta apply to .*, not listwise"),
    (dpo, {"loss_type": "simpo_sdpo", "dynamic_beta": True}, "--dynamic_beta apply to .*, not simpo_sdpo"),
    (dpo, {"max_valid_samples": -1}, "--max_valid_samples must be 0 or more"),
    (sft, {"max_train_samples": 0}, "--max_train_samples must be at least 1"),
    (sft, {"eval_steps": -1}, "--eval_steps and --save_steps must be 0 or more"),
    (sft, {"learning_rate": "fast"}, "--learning_rate: expected float"),
    (sft, {"adapter": "no/such/folder"}, "--adapter 'no/such/folder': not a LoRA adapter folder"),
    (inference, {"max_samples": 0}, "--max_samples must be at least 1"),
    (inference, {"max_new_tokens": 0}, "--max_new_tokens must be at least 1"),
    (rules, {"rule": "recency"}, "--rule: expected one of"),
    (rules, {"hint_recency": 1.5}, "--hint_recency must lie in"),
    (sft, {"hint_recency": 0.0}, "--hint_recency must lie in"),
    (inference, {"hint_size": 0}, "--hint_size must be at least 1"),
    (sft, {"max_train_seconds": -1}, "--max_train_seconds must be 0"),
    (softmax_dpo, {"dataloader_workers": -2}, "--dataloader_workers must be -1"),
    # Before any work, not in Adam's first step after run_config.json was written.
    (sft, {"learning_rate": -1.0}, "--learning_rate must be above 0, got -1.0"),
    (dpo, {"learning_rate": 0.0}, "--learning_rate must be above 0"),
    (sft, {"learning_rate": float("nan")}, "--learning_rate must be above 0, got nan"),
    (sft, {"num_train_epochs": 0.0}, "--num_train_epochs must be above 0"),
    (sft, {"max_steps": 0}, "--max_steps must be -1"),
    (softmax_dpo, {"batch_size": 0}, "--batch_size and --gradient_accumulation_steps must be at least 1"),
    (sft, {"warmup_ratio": 1.0}, "--warmup_ratio must lie in"),
    (sft, {"max_grad_norm": -0.3}, "--weight_decay and --max_grad_norm must be 0 or more"),
])
def test_a_bad_value_is_refused_before_any_work(entry, flags, message, tmp_path):
    output_dir = tmp_path / "out"
    # Data files that do not exist: the flags are refused before anything is read, loaded or written.
    with pytest.raises(InputError, match=message):
        entry(output_dir=str(output_dir), **flags)
    assert not output_dir.exists()


def test_command_builds_a_checked_flags_object_from_keyword_flags():
    @dataclasses.dataclass
    class ToyFlags(OutputFlags):
        output_dir: str = "output/toy"
        steps: int = flag(2, "How many steps.")

        def check(self):
            super().check()
            if self.steps > 9:
                raise InputError("--steps must be at most 9")

    @command(ToyFlags)
    def toy(flags: ToyFlags):
        """Do a toy thing.

        A second paragraph that --help does not show.
        """
        return flags

    assert toy(steps=3) == ToyFlags(output_dir="output/toy", steps=3)
    assert toy() == ToyFlags()
    assert toy.__doc__.startswith("Do a toy thing.\n\nArgs:\n")
    assert documented_flags(toy) == {"output_dir": flag_help(OutputFlags, "output_dir"), "steps": "How many steps."}
    with pytest.raises(InputError, match="--steps must be at most 9"):
        toy(steps=10)
    with pytest.raises(InputError, match="--steps: expected int, got True"):
        toy(steps=True)
    with pytest.raises(TypeError):
        toy(stpes=3)

    @dataclasses.dataclass
    class Undocumented(OutputFlags):
        quiet: bool = False

    with pytest.raises(ValueError, match="Undocumented.quiet has no help text"):
        command(Undocumented)(toy)


def test_hint_difference_names_hints_that_differ_from_the_adapters_training(tmp_path):
    adapter = tmp_path / "sft"
    (adapter / "checkpoint-8").mkdir(parents=True)
    assert PromptFlags(hint_file="train.json").hint_difference(str(adapter)) is None, "no run_config.json: unknown"
    (adapter / "run_config.json").write_text(json.dumps({"hint_file": "data/train.json", "hint_size": 3,
                                                         "hint_recency": 0.5}))
    assert PromptFlags(hint_file="elsewhere/train.json", hint_recency=0.5).hint_difference(str(adapter)) is None
    assert PromptFlags(hint_file="train.json").hint_difference(str(adapter / "checkpoint-8")) == (
        f"{adapter / 'checkpoint-8'} was trained with hints (hint_size 3, hint_recency 0.5); "
        "this run's prompts are built with hints (hint_size 3, hint_recency 1.0)")
    assert PromptFlags().hint_difference(str(adapter)).endswith("this run's prompts are built without hints")
    # A run from before --hint_recency existed counted every history title alike; 1 is 1.0.
    (adapter / "run_config.json").write_text(json.dumps({"hint_file": "train.json", "hint_size": 3}))
    assert PromptFlags(hint_file="train.json").hint_difference(str(adapter)) is None
    assert PromptFlags(hint_file="train.json", hint_recency=1).hint_difference(str(adapter)) is None
    # Only a checkpoint folder borrows its run's settings: another folder's parent is not its run.
    (tmp_path / "run_config.json").write_text(json.dumps({"hint_file": "train.json", "hint_recency": 0.5}))
    (tmp_path / "other").mkdir()
    assert PromptFlags().hint_difference(str(tmp_path / "other")) is None


@pytest.mark.parametrize("entry, flags, wrong", [
    (results, {"run_dir": "run"}, {"bootstrap_seed": "zero"}), (curves, {"runs": "a=b"}, {"eval_folder": 3}),
    (audit_command, {}, {"margin": "wide"}), (prepare, {"source": ".", "output_dir": "out"}, {"min_history": 2.5}),
    (prepare_log, {"interactions": "log.csv", "items": "items.csv", "output_dir": "out"}, {"keep_repeats": "yes"}),
    (to_text, {"source": "."}, {"output_dir": 7})])
def test_every_command_line_is_made_from_a_flag_class(entry, flags, wrong):
    """The data tools, the audit, results and curves check and document their flags as the stages do: each flag
    has its help in --help, and a value of the wrong type is refused naming its flag, before any work."""
    assert all(f"    {name}: " in entry.__doc__ for name in inspect.signature(entry).parameters)
    with pytest.raises(InputError, match=f"^--{next(iter(wrong))}: expected "):
        entry(**flags, **wrong)
