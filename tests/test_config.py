import math

import pytest

from ple.cli import main
from ple.config import FIELDS, config_reference, load_config
from ple.config_values import parse_overrides
from ple.errors import PLEError

BASE = {"model": "m", "dataset": "q.jsonl", "principle": "be kind", "reward": "vader"}


def test_defaults_are_the_papers():
    config = load_config(overrides=BASE)
    assert (config.tau0, config.alpha, config.schedule) == (0.2, 0.9, "exponential")
    # Lemma 5.2 is one-sided, and the weighted-SFT weights carry the rewards (temperature tau_t).
    assert (config.negative_gap, config.wsft_temperature) == ("wsft", "auto")
    assert (config.use_lora, config.lora_r, config.lora_alpha, config.lora_target_modules) == (
        True,
        8,
        16,
        "all-linear",
    )


def test_cli_strings_are_coerced():
    config = load_config(
        overrides={**BASE, **parse_overrides(["learning_rate=1e-4", "tau0=-inf", "use_lora=false", "iterations=5"])}
    )
    assert config.learning_rate == 1e-4 and config.tau0 == -math.inf
    assert config.use_lora is False and config.iterations == 5
    assert load_config(overrides={**BASE, **parse_overrides(["wsft_temperature=0.5"])}).wsft_temperature == 0.5
    assert load_config(overrides={**BASE, **parse_overrides(["wsft_temperature=auto"])}).wsft_temperature == "auto"
    distill = load_config(overrides={**BASE, **parse_overrides(["method=distill", "reward=null"])})
    assert distill.reward is None  # a reward the config file set can be taken out on the command line


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(PLEError, match="unknown config key 'tua0'.*did you mean 'tau0'"):
        load_config(overrides={**BASE, "tua0": 0.1})


@pytest.mark.parametrize(
    "override, message",
    [
        ({"schedule": "linear"}, "schedule='linear' is not one of"),
        ({"iterations": "three"}, "iterations='three' should be a int"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"sft_epochs": 1}, "needs an sft_dataset"),
        ({"reward": None}, "reward is required"),
        ({"rank_coef": 0, "sft_coef": 0}, "nothing would be trained"),
        ({"tau0": float("nan")}, "tau0 must be a number"),
        ({"model": None}, "model is required"),
        ({"merge_lora": True, "use_lora": False}, "merge_lora needs use_lora"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation=flash_attention_2 needs the flash-attn"),
        ({"attn_implementation": "flash"}, "attn_implementation='flash' is not one of"),
        ({"dtype": "float16"}, "dtype='float16' is not one of"),
        ({"wsft_temperature": 0}, "wsft_temperature must be auto or a number > 0, got 0.0"),
        ({"wsft_temperature": "hot"}, "wsft_temperature must be auto or a number > 0, got 'hot'"),
        (
            {"method": "raft", "queries_per_iteration": 5, "raft_k": 4},
            "2\\*queries_per_iteration=10 must be a multiple",
        ),
        (
            {"method": "rloo", "queries_per_iteration": 5, "iterations": 3, "batch_size": 4},
            "queries_per_iteration\\*iterations=15 must be a multiple",
        ),
        (
            {"method": "grpo", "queries_per_iteration": 5, "iterations": 3},
            "2\\*queries_per_iteration\\*iterations=30 must be a multiple of 32",
        ),
        ({"method": "grpo", "grpo_num_generations": 1}, "grpo_num_generations must be >= 2"),
        (
            {"method": "dpo", "sft_epochs": 1, "sft_dataset": "s.jsonl", "use_lora": False},
            "method=dpo with sft_epochs > 0 needs use_lora: true",
        ),
    ],
)
def test_bad_values_and_inconsistent_combinations(override, message):
    with pytest.raises(PLEError, match=message):
        load_config(overrides={**BASE, **override})


def test_method_presets_reach_every_ablation():
    assert load_config(overrides={**BASE, "method": "ple-rank-only"}).sft_coef == 0
    assert load_config(overrides={**BASE, "method": "ple-wsft-only"}).rank_coef == 0
    assert load_config(overrides={**BASE, "method": "ple-no-decay"}).schedule == "constant"
    assert load_config(overrides={**BASE, "method": "ple-symmetric"}).negative_gap == "rank"
    rlcd = load_config(overrides={**BASE, "method": "rlcd"})
    assert rlcd.tau0 == -math.inf and rlcd.schedule == "constant"
    distill = load_config(overrides={**BASE, "reward": None, "method": "distill"})
    assert distill.reward is None and distill.sft_weights == "guided" and distill.rank_coef == 0


def test_preset_conflict_is_an_error():
    with pytest.raises(PLEError, match="method=rlcd sets tau0"):
        load_config(overrides={**BASE, "method": "rlcd", "tau0": 0.5})


def test_config_file_errors(tmp_path):
    with pytest.raises(PLEError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(PLEError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(PLEError, match="mapping"):
        load_config(listy)


def test_set_needs_key_value():
    with pytest.raises(PLEError, match="key=value"):
        parse_overrides(["tau0"])


def test_help_documents_every_field():
    reference = config_reference()
    for name in FIELDS:
        assert f"  {name} (default" in reference


def test_cli_prints_one_line_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: m\ndataset: q.jsonl\nprinciple: p\nreward: vader\ntua0: 0.3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown config key 'tua0'" in err


def test_set_accepts_yaml_lists_for_list_fields():
    config = load_config(
        overrides={
            **BASE,
            **parse_overrides(
                ['eval_rewards=["ple.sentiment:judge_reward"]', "reward=[vader, {name: m:f, weight: 2}]"]
            ),
        }
    )
    assert config.eval_rewards == ["ple.sentiment:judge_reward"]
    assert config.reward == ["vader", {"name": "m:f", "weight": 2}]
    assert load_config(overrides={**BASE, "reward": "m:f"}).reward == "m:f"
    with pytest.raises(PLEError, match="not a valid YAML list"):
        load_config(overrides={**BASE, "eval_rewards": "[unclosed"})


def test_output_dir_expands_the_home_directory(monkeypatch, tmp_path):
    """`~/x` is the home directory, as the shell that prints the run's paths reads it; not a folder named `~`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(overrides={**BASE, "output_dir": "~/runs/x"}).output_dir == str(tmp_path / "runs" / "x")
    assert load_config(overrides={**BASE, "output_dir": "runs/~x"}).output_dir == "runs/~x"


def test_a_run_saved_with_the_dtype_auto_resolves_to_is_the_same_setting(tmp_path):
    """dtype auto is float32 on a CPU: a run that recorded float32 (or one from before auto) resumes under auto,
    and one that recorded bfloat16 does not."""
    import yaml

    from ple.training.rundir import config_changes

    config = load_config(overrides={**BASE, "device": "cpu"})
    assert config.dtype == "auto"
    saved = tmp_path / "config.yaml"
    for recorded, changes in (("float32", []), ("bfloat16", ["dtype"])):
        saved.write_text(yaml.safe_dump({**config.to_dict(), "dtype": recorded}))
        assert config_changes(saved, config) == changes


def test_a_trl_argument_given_to_pleconfig_names_ples_key():
    from ple import PLEConfig

    with pytest.raises(PLEError, match="'num_train_epochs' is TRL's name; ple's key is epochs_per_iteration"):
        PLEConfig(num_train_epochs=3)
    with pytest.raises(PLEError, match="unknown config key 'learnin_rate' \\(did you mean 'learning_rate'\\?\\)"):
        PLEConfig(learnin_rate=1e-3)
    with pytest.raises(PLEError, match="'per_device_train_batch_size' is TRL's name; ple's key is batch_size"):
        load_config(overrides={**BASE, "per_device_train_batch_size": 4})


def test_a_list_given_with_set_to_a_one_value_key_is_one_line():
    with pytest.raises(PLEError, match="principle takes one value, and '\\[a, b\\]' reads as a YAML list"):
        load_config(overrides={**BASE, **parse_overrides(["principle=[a, b]"])})
    assert load_config(overrides={**BASE, **parse_overrides(["principle=[be kind"])}).principle == "[be kind"
