"""Every stage's command-line flags, in groups defined once with their help text.

A stage's flags are a dataclass made of the groups it uses plus its own fields; trainer/commands.py
turns a stage function of one such object into a command line (`command`).
"""

import dataclasses
import typing

from trainer.collaborative import CollaborativeHints, load_hints
from trainer.commands import Flags, flag
from trainer.errors import InputError
from trainer.modeling import BASE_FINGERPRINT_KEY, EMBEDDED_MODEL_NAME, LLAMA_PROJECTIONS, is_adapter_folder
from trainer.outputs import adapter_run_config
from trainer.prompts import EVAL_TEMPLATE_INDEX


def check_adapter_folder(path: str) -> None:
    """Refuse an --adapter that is not a LoRA adapter folder, the one check every stage makes of it."""
    if not is_adapter_folder(path):
        raise InputError(f"--adapter {path!r}: not a LoRA adapter folder (no adapter_config.json); sft.py writes one")


@dataclasses.dataclass
class TrainingDataFlags(Flags):
    train_file: str = flag("data/lastfm/train.json", "JSON training records (see data/README.md).")
    valid_file: str = flag("data/lastfm/valid.json",
                           "JSON validation records; their loss is reported during and after training.")
    max_train_samples: int | None = flag(
        None, "Train on a seeded random sample of this many records (seeded by --seed; all when unset).")
    max_valid_samples: int | None = flag(
        500, "Validate on a seeded random sample of this many records (all when unset; 0 skips validation).")

    def check(self) -> None:
        super().check()
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise InputError(f"--max_train_samples must be at least 1 (unset for all), got {self.max_train_samples}")
        if self.max_valid_samples is not None and self.max_valid_samples < 0:
            raise InputError(f"--max_valid_samples must be 0 or more, got {self.max_valid_samples}")

    @property
    def validates(self) -> bool:
        return self.max_valid_samples != 0


@dataclasses.dataclass
class EvaluationDataFlags(Flags):
    renamed: typing.ClassVar[dict[str, str]] = {"seed": "sample_seed"}

    test_file: str = flag("data/lastfm/test.json", "JSON records to evaluate (see data/README.md).")
    max_samples: int | None = flag(
        None, "Evaluate a seeded random sample of this many records (seeded by --sample_seed; all when unset).")
    sample_seed: int = flag(0, "Seeds the sample of --max_samples: the same seed and size draw the same records for "
                               "every model and rule.")

    def check(self) -> None:
        super().check()
        if self.max_samples is not None and self.max_samples < 1:
            raise InputError(f"--max_samples must be at least 1 (unset for all), got {self.max_samples}")


@dataclasses.dataclass
class PromptFlags(Flags):
    domain: str = flag("music", "Prompt wording: music, movie, book or game.")
    template_index: int | None = flag(
        None, "Use this one template (0-4) for every prompt. Unset: each training prompt draws one, seeded by "
              f"--seed and its index; validation and evaluation use template {EVAL_TEMPLATE_INDEX}.")
    max_prompt_tokens: int = flag(512, "Token budget of a prompt; longer prompts drop their oldest history titles.")
    hint_file: str | None = flag(
        None, "Training records whose counts add a hint to every prompt: the candidates that other users with "
              "the same history titles chose next most often (trainer.collaborative); pass the same file when "
              "training and evaluating. Unset: the text-only prompts of the paper.")
    hint_size: int = flag(3, "Most candidates a hint names.")
    hint_recency: float = flag(
        1.0, "Weight of a history title in the hint's counts by how recent it is: a title last seen i items before "
             "the newest counts hint_recency**i, in (0, 1]; 1 counts every title alike.")

    def check(self) -> None:
        super().check()
        if self.hint_size < 1:
            raise InputError(f"--hint_size must be at least 1, got {self.hint_size}")
        if not 0 < self.hint_recency <= 1:
            raise InputError(f"--hint_recency must lie in (0, 1], got {self.hint_recency}")

    def hints_for(self, data_file: str) -> CollaborativeHints | None:
        """The hints of the prompts built from `data_file` (None without --hint_file)."""
        return load_hints(self.hint_file, self.hint_size, data_file, self.hint_recency)

    def hint_difference(self, adapter: str) -> str | None:
        """What differs between this run's hints and those `adapter` was trained with (adapter_run_config); None
        when they match or are not recorded. A model meeting other hints than it learned from scores lower
        without any error to say why."""
        trained = adapter_run_config(adapter)
        if trained is None:
            return None
        before, now = hint_description(trained), hint_description(dataclasses.asdict(self))
        return None if before == now else f"{adapter} was trained {before}; this run's prompts are built {now}"


def hint_description(config: dict) -> str:
    """The hint settings of a run's flags (older runs without --hint_recency had recency 1)."""
    if not config.get("hint_file"):
        return "without hints"
    # float(): a recency given as 1 on the command line is the default 1.0.
    return f"with hints (hint_size {config.get('hint_size', 3)}, hint_recency {float(config.get('hint_recency', 1.0))})"


@dataclasses.dataclass
class ModelFlags(Flags):
    model_name: str = flag(
        EMBEDDED_MODEL_NAME,
        f"Base model: '{EMBEDDED_MODEL_NAME}' (the bundled SmolLM2-135M-Instruct), a local folder or a hub id.")
    dtype: str = flag("auto", "auto (bf16 on a capable GPU, else fp32), float32, bfloat16 or float16; "
                              "bf16 also turns on bf16 autocast in training.")
    load_in_4bit: bool = flag(False, "QLoRA: load the base model in 4-bit NF4 through bitsandbytes.")
    allow_other_base_model: bool = flag(
        False, "Use an --adapter trained on another base model than --model_name (its run_config.json records the "
               "base model's weights fingerprint); refused by default, as the adapter then computes something else.")

    def check_adapter_base(self, adapter: str | None, model_path: str, fingerprint: str) -> None:
        """Refuse an --adapter whose recorded base model weights differ from those loaded (--model_name)."""
        trained = adapter_run_config(adapter) if adapter else None
        recorded = (trained or {}).get(BASE_FINGERPRINT_KEY)
        if recorded is None or recorded == fingerprint or self.allow_other_base_model:
            return
        raise InputError(f"--adapter {adapter} was trained on the base model {trained.get('resolved_model_path')} "
                         f"(weights {recorded}), this run loads {model_path} (weights {fingerprint}); an adapter on "
                         "another base model computes something else (--allow_other_base_model True uses it anyway)")


@dataclasses.dataclass
class LoraFlags(Flags):
    lora_r: int = flag(8, "LoRA rank of a fresh adapter (one given with --adapter keeps its own settings).")
    lora_alpha: int = flag(32, "LoRA scaling numerator of a fresh adapter (the update is scaled by alpha / r).")
    lora_dropout: float = flag(
        0.1, "Dropout on the LoRA input of a fresh adapter (the S-DPO authors' 0.1). It adds to each CPU step "
             "(docs/stages.md); the preference stages turn it off while training.")
    lora_target_modules: str | tuple[str, ...] = flag(
        ",".join(LLAMA_PROJECTIONS),
        "Comma-separated module names that get a fresh adapter (default: every attention and MLP projection).")


@dataclasses.dataclass
class OptimizationFlags(Flags):
    seed: int = flag(42, "Seeds the samples, the templates, the negatives, LoRA initialisation and the data order.")
    num_train_epochs: float = flag(1.0, "Passes over the training sample (ignored when --max_steps is positive).")
    max_steps: int = flag(-1, "Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = flag(4, "Prompts per device per forward pass (a preference prompt brings 1 + neg_num "
                              "answers).")
    gradient_accumulation_steps: int = flag(1, "Forward passes per optimizer step.")
    learning_rate: float = flag(1e-4, "Peak learning rate of AdamW.")
    lr_scheduler_type: str = flag("cosine", "Learning rate schedule after warm-up (a transformers scheduler "
                                            "name, e.g. cosine, linear, constant).")
    warmup_ratio: float = flag(0.05, "Fraction of the steps spent warming the learning rate up from 0.")
    weight_decay: float = flag(0.0, "AdamW weight decay.")
    max_grad_norm: float = flag(0.3, "Gradient clipping norm (the S-DPO authors' 0.3).")
    gradient_checkpointing: bool = flag(False, "Recompute activations in the backward pass to save memory "
                                               "(slower).")
    max_train_seconds: float = flag(
        0, "Stop training at the end of the first optimizer step that ends this many seconds after the trainer "
           "was built (a preference stage's precomputed reference counts), then validate and save as usual; "
           "the learning-rate schedule stays the one planned for the whole run (0: no limit).")
    dataloader_workers: int = flag(
        -1, "Processes that build batches while the model computes: -1 picks 2 per process on a GPU and 0 on "
            "a CPU, where they would take cores from the training itself.")

    def check(self) -> None:
        super().check()
        if not self.learning_rate > 0:  # also refuses NaN
            raise InputError(f"--learning_rate must be above 0, got {self.learning_rate}")
        if not self.num_train_epochs > 0:
            raise InputError(f"--num_train_epochs must be above 0, got {self.num_train_epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise InputError(f"--max_steps must be -1 (run the epochs) or at least 1, got {self.max_steps}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise InputError(f"--batch_size and --gradient_accumulation_steps must be at least 1, got "
                             f"{self.batch_size} and {self.gradient_accumulation_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if not (self.weight_decay >= 0 and self.max_grad_norm >= 0):
            raise InputError(f"--weight_decay and --max_grad_norm must be 0 or more, got {self.weight_decay} and "
                             f"{self.max_grad_norm}")
        if self.max_train_seconds < 0:
            raise InputError(f"--max_train_seconds must be 0 (no limit) or more, got {self.max_train_seconds}")
        if self.dataloader_workers < -1:
            raise InputError(f"--dataloader_workers must be -1 (automatic), 0 or more, got {self.dataloader_workers}")


@dataclasses.dataclass
class CheckpointFlags(Flags):
    logging_steps: int = flag(10, "Log the training loss (and a preference stage's rewards) every this many "
                                  "optimizer steps.")
    eval_steps: float = flag(
        0, "Validate every this many optimizer steps, or, below 1, every this fraction of the run, as well as "
           "at the end (0: only at the end).")
    save_steps: float = flag(
        0, "Save a checkpoint every this many optimizer steps, or, below 1, every this fraction of the run (0: "
           "only the final adapter); a run killed and started again with the same flags continues from the "
           "last one.")
    select_best: bool = flag(
        False, "Keep the adapter of the validation with the lowest loss (SFT: the answer loss; preference "
               "stages: the preference loss) instead of the last weights, as the S-DPO authors do; needs "
               "--eval_steps, and saves a checkpoint at every validation.")

    def check(self) -> None:
        super().check()
        if self.eval_steps < 0 or self.save_steps < 0:
            raise InputError(f"--eval_steps and --save_steps must be 0 or more, got {self.eval_steps} and "
                             f"{self.save_steps}")
