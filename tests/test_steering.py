"""circuitflow.steering on tiny random models: batched, left-padded, KV-cached steering."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import build_llava_folder

from circuitflow import extract, models, steering, store, vectors
from circuitflow.core.generation import greedy_generate, truncate_at_eos, window_mask
from circuitflow.core.hooks import attach_bridge
from circuitflow.core.layers import resolve_layers
from circuitflow.core.rand import random_unit
from circuitflow.core.tokens import left_pad, position_ids
from circuitflow.models.readout import ImagePair

PROMPTS = [
    "The meeting moved to room 4B at 3 pm.",
    "Thanks.",
    "Your order has shipped and should arrive within three to five business days.",
    "The bridge is closed.",
]
T = 6  # new tokens
ARCHS_UNDER_TEST = ("llama", "gpt2", "gemma3")  # rotary+GQA, learned positions, sliding window


@pytest.fixture(scope="module", params=ARCHS_UNDER_TEST)
def bridge(request, tiny_model_dirs):
    torch.manual_seed(0)
    return models.load_bridge(tiny_model_dirs[request.param])


def _prompts(bridge):
    rows = [{"sample_id": f"p{i}", "text": t} for i, t in enumerate(PROMPTS)]
    return steering.encode_prompts(bridge.tokenizer, rows, "{text}", prepend_bos=True)


def _padded(bridge, prompts):
    return left_pad([p.ids for p in prompts], bridge.tokenizer.pad_token_id)


def _unit(d, seed=0):
    v = np.random.default_rng(seed).standard_normal(d)
    return v / np.linalg.norm(v)


def _strong(bridge, layer=1, scale=None):
    """A vector big enough to change greedy tokens of a tiny random model."""
    return steering.SteerConfig(
        direction="anger",
        layer=layer,
        alpha=1.0,
        alpha_mode="raw",
        scale=scale or 50.0,
        condition="anger",
        unit=_unit(bridge.cfg.d_model),
    )


# ---------------------------------------------------------------- generation without steering
def test_left_padded_batch_equals_each_prompt_alone(bridge):
    """Our cached greedy loop over a left-padded batch == bridge.generate on each prompt alone."""
    prompts = _prompts(bridge)
    ids, mask = _padded(bridge, prompts)
    assert len({len(p.ids) for p in prompts}) == len(prompts)  # really different lengths
    got = greedy_generate(bridge, ids, mask, T)
    for i, p in enumerate(prompts):
        ref = bridge.generate(
            torch.tensor([p.ids]),
            max_new_tokens=T,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            return_type="tokens",
        )
        assert got[i].tolist() == ref[0, len(p.ids) :].tolist(), f"prompt {i}"


# ---------------------------------------------------------------- zero alpha
def test_zero_alpha_reproduces_unsteered_token_for_token(bridge):
    """Rows steered with a zero vector (through the hook, beside steered rows) == unsteered."""
    prompts = _prompts(bridge)
    strong = _strong(bridge)
    zero = steering.SteerConfig(
        direction="anger",
        layer=1,
        alpha=0.0,
        alpha_mode="relative",
        scale=0.0,
        condition="anger",
        unit=strong.unit,
    )
    configs = [steering.SteerConfig(direction="none"), zero, strong]
    gens = steering.run_sweep(bridge, prompts, configs, T, window=3, batch_size=64, progress=False)
    by = {(g.prompt.prompt_id, g.config.alpha): g.tokens for g in gens}
    for p in prompts:
        assert by[(p.prompt_id, 0.0)] == gens[[g.prompt for g in gens].index(p)].tokens
    none = [g for g in gens if g.config.direction == "none"]
    zeros = [g for g in gens if g.config.alpha == 0.0 and g.config.direction != "none"]
    assert [g.tokens for g in none] == [g.tokens for g in zeros]
    # and a zero vector added explicitly through the hook for every row, too
    ids, mask = _padded(bridge, prompts)
    plain = greedy_generate(bridge, ids, mask, T)
    s = steering.Steerer([0, 1])
    s.set_vectors({0: torch.zeros(len(prompts), bridge.cfg.d_model)})
    with attach_bridge(bridge, s.fwd_hooks()):
        zeroed = greedy_generate(bridge, ids, mask, T, s, window=4)
    assert s.calls == {0: T}  # the hook ran on the prompt pass and every decoding step
    assert torch.equal(plain, zeroed)
    # the strong vector does change the generations (the test has power)
    steered = [g.tokens for g in gens if g.config.alpha == 1.0]
    assert steered != [g.tokens for g in none]


# ---------------------------------------------------------------- where the vector lands
@pytest.mark.parametrize("share_prefix", [True, False])
def test_hook_adds_vector_at_every_decoding_step_at_the_right_position(bridge, share_prefix):
    """Record the residual before and after the steering hook: the difference is the vector
    on the last `window` real prompt tokens in the prompt pass and on the one new position of
    every decoding step, zero on pads, BOS and earlier prompt tokens (and on the shared
    prefix pass); and every cached step's steered residual equals the no-cache forward of
    the final sequence at the same absolute position with the vector on the same positions.
    Every prompt appears twice (two configurations), so the shared prefix pass runs."""
    layer, window = 1, 3
    prompts = _prompts(bridge)
    ids, mask = _padded(bridge, prompts)
    ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    N, P = ids.shape
    d = bridge.cfg.d_model
    vec = torch.from_numpy(np.stack([_unit(d, i) * (5.0 + i) for i in range(N)])).float()
    vec[1] = vec[N // 2 + 1] = 0.0  # one prompt not steered in either copy
    hook = store.hook_name(layer, "hook_resid_pre")
    before, after = [], []
    s = steering.Steerer([layer])
    hooks = [(hook, lambda x: before.append(x.detach().clone()))]
    hooks += s.fwd_hooks()
    hooks += [(hook, lambda x: after.append(x.detach().clone()))]
    s.set_vectors({layer: vec})
    with attach_bridge(bridge, hooks):
        gen = greedy_generate(bridge, ids, mask, T, s, window=window, share_prefix=share_prefix)
    split = P - window
    if share_prefix:  # one unsteered pass over the distinct prompts' first P - window columns
        prefix_in, prefix_out = before.pop(0), after.pop(0)
        assert prefix_in.shape == (N // 2, split, d)
        assert torch.equal(prefix_in, prefix_out)
        first_col = split
    else:
        first_col = 0
    assert len(before) == len(after) == T  # prompt pass + T - 1 decoding steps
    assert s.calls == {layer: T}
    # prompt pass (the steered window, or the whole prompt)
    assert before[0].shape == (N, P - first_col, d)
    diff = (after[0] - before[0]).double()
    lengths = mask.sum(1)
    for i in range(N):
        first_real = P - int(lengths[i])
        for col in range(first_col, P):
            steered_col = col >= max(P - window, first_real + 1)  # never BOS or pads
            expected = vec[i].double() if steered_col else torch.zeros(d, dtype=torch.float64)
            torch.testing.assert_close(diff[i, col - first_col], expected, atol=1e-5, rtol=0)
    # decoding steps: one position each, the vector on it
    for k in range(1, T):
        assert before[k].shape == (N, 1, d), k
        torch.testing.assert_close(
            (after[k] - before[k])[:, 0].double(), vec.double(), atol=1e-5, rtol=0
        )
    # absolute positions: no-cache forward of prompt + generated tokens, vector on the window
    # and on every generated position, reproduces each cached step's residual and token
    full_ids = torch.cat([ids, gen], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(gen)], dim=1)
    positions = window_mask(mask, window, bos=True)
    positions = torch.cat([positions, torch.ones_like(gen)], dim=1)[..., None].float()
    seen = []

    def add_all(x, hook):
        out = x + positions * vec[:, None, :]
        seen.append(out.detach().clone())
        return out

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, add_all)]):
        logits = bridge(
            full_ids,
            attention_mask=full_mask,
            position_ids=position_ids(full_mask),
        )
    ref = seen[0]
    real = mask.bool()[:, first_col:]
    got = after[0][real]
    torch.testing.assert_close(got, ref[:, first_col:P][real], atol=1e-4, rtol=1e-4)
    for k in range(1, T):
        torch.testing.assert_close(after[k][:, 0], ref[:, P + k - 1], atol=1e-4, rtol=1e-4)
    assert torch.equal(logits[:, P - 1 : P + T - 1].argmax(-1), gen)
    assert torch.equal(gen[1], gen[N // 2 + 1])  # the unsteered prompt and its twin
    assert not torch.equal(gen[0], gen[N // 2])  # different vectors, different tokens


def test_window_mask_by_hand():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    got = window_mask(mask, window=3, bos=True)
    expected = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(got, expected)
    assert torch.equal(window_mask(mask, 0, bos=True), torch.zeros_like(mask))
    assert window_mask(mask, 10, bos=False).tolist() == mask.tolist()


def test_steerer_follows_the_generation_phases():
    """Outside a generation the hooks are no-ops; prefill adds under the mask, decode on the
    one new position; reset clears the vectors but keeps the call counts until the next set."""
    s = steering.Steerer([2, 0, 2])
    assert s.hook_names() == ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre"]
    hook = dict(s.fwd_hooks())
    x = torch.zeros(2, 3, 4)
    s.set_vectors({2: torch.ones(2, 4)})
    assert hook["blocks.2.hook_resid_pre"](x) is None
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    s.prefill(mask)
    assert torch.equal(hook["blocks.2.hook_resid_pre"](x), mask[..., None].float().expand(2, 3, 4))
    assert hook["blocks.0.hook_resid_pre"](x) is None  # no vector at block 0
    s.decode()
    assert torch.equal(hook["blocks.2.hook_resid_pre"](x[:, :1]), torch.ones(2, 1, 4))
    with pytest.raises(steering.SteeringError, match="one new position per step"):
        hook["blocks.2.hook_resid_pre"](x)
    assert s.calls == {2: 3}
    s.reset()
    assert (s.phase, s.vectors, s.prefill_mask, s.calls) == (None, {}, None, {2: 3})
    assert hook["blocks.2.hook_resid_pre"](x) is None
    s.set_vectors({0: torch.ones(2, 4)})
    assert s.calls == {}


# ---------------------------------------------------------------- batched == one at a time
def test_batched_sweep_equals_one_configuration_at_a_time(bridge):
    prompts = _prompts(bridge)
    d = bridge.cfg.d_model
    configs = [steering.SteerConfig(direction="none")]
    for layer, scale in ((0, 8.0), (2, 40.0)):
        for seed in (0, 1):
            configs.append(
                steering.SteerConfig(
                    direction=f"random:{seed}",
                    layer=layer,
                    alpha=scale,
                    alpha_mode="raw",
                    scale=scale,
                    control=True,
                    seed=seed,
                    unit=random_unit(d, 0, seed, layer),
                )
            )
    batched = steering.run_sweep(bridge, prompts, configs, T, 2, batch_size=256, progress=False)
    assert len(batched) == len(prompts) * len(configs)
    for j, config in enumerate(configs):
        alone = steering.run_sweep(bridge, prompts, [config], T, 2, batch_size=256, progress=False)
        for i in range(len(prompts)):
            assert batched[i * len(configs) + j].tokens == alone[i].tokens, (i, config)
    # small batches (several generations, different padding) give the same tokens
    chunked = steering.run_sweep(bridge, prompts, configs, T, 2, batch_size=5, progress=False)
    assert [g.tokens for g in chunked] == [g.tokens for g in batched]
    assert len({tuple(g.tokens) for g in batched}) > len(prompts)  # configs made a difference


# ---------------------------------------------------------------- configurations
def test_resolve_layers():
    assert resolve_layers([0.33, 0.5], 30) == (10, 15)
    assert resolve_layers([0.33, 0.5], 18) == (6, 9)
    assert resolve_layers([0, 1.0, 3, 0.0], 18) == (0, 3, 17)
    with pytest.raises(ValueError, match=r"steering.layers: block 30 out of range.*'m'"):
        resolve_layers([30], 30, "steering.layers", "m")


def test_build_configs_names_scales_and_controls():
    d = 16
    params = steering.SteeringParams(
        layers=(1, 2),
        alphas_relative=(0, 0.5),
        alphas_raw=(3.0,),
        components=(0, 1),
        random_seeds=(0, 7),
    )
    units = {c: _unit(d, i) for i, c in enumerate(["gratitude", "anger"])}
    comps = {c: np.stack([_unit(d, 10 + i), _unit(d, 20 + i)]) for i, c in enumerate(units)}
    x = np.random.default_rng(5).standard_normal((50, d)) * np.linspace(0.5, 3.0, d)
    configs = steering.build_configs(
        params,
        [1, 2],
        {1: units, 2: units},
        {1: comps, 2: comps},
        {1: 10.0, 2: 20.0},
        d,
        control_x={1: x, 2: x},
    )
    assert configs[0].direction == "none" and not configs[0].steered
    per_layer_alpha = 2 + 2 * 2 + 2  # conditions + pc{0,1} x conditions + random seeds
    assert len(configs) == 1 + 2 * 2 * per_layer_alpha  # alpha 0 adds nothing
    names = {c.direction for c in configs}
    assert {"gratitude", "anger", "pc0:anger", "pc1:gratitude", "random:0", "random:7"} <= names
    rel = [c for c in configs if c.alpha_mode == "relative"]
    assert {(c.layer, c.scale) for c in rel} == {(1, 5.0), (2, 10.0)}
    raw = [c for c in configs if c.alpha_mode == "raw"]
    assert {c.scale for c in raw} == {3.0}
    for c in configs[1:]:
        assert np.isclose(np.linalg.norm(c.vector()), c.scale)
        assert c.control == c.direction.startswith("random:")
        assert (c.seed is not None) == c.control
    r = {(c.layer, c.direction): c.unit for c in configs if c.control}
    again, _ = steering.matched_controls(x, units, (0,), 1)  # seeded per seed x layer
    np.testing.assert_array_equal(r[(1, "random:0")], again[0])
    assert not np.allclose(r[(1, "random:0")], r[(1, "random:7")])
    assert not np.allclose(r[(1, "random:0")], r[(2, "random:0")])
    with pytest.raises(steering.SteeringError, match=r"random_seeds.*layer 1.*random_seeds: \[\]"):
        steering.build_configs(params, [1], {1: units}, {1: comps}, {1: 10.0}, d)
    pc = next(c for c in configs if c.direction == "pc1:anger")
    assert pc.condition == "anger" and np.allclose(pc.unit, comps["anger"][1])


def _anisotropic(n=400, d=32, seed=0):
    """Activations whose variance falls off over the axes (a few high-variance directions)."""
    g = np.random.default_rng(seed)
    q, _ = np.linalg.qr(g.standard_normal((d, d)))
    return (g.standard_normal((n, d)) * np.geomspace(10.0, 0.01, d)) @ q.T + 3.0


def test_matched_control_has_the_steering_norm_and_the_directions_variance():
    """The random control of a layer carries the projected variance of the layer's
    median-variance emotion direction (within 5%) at the steering vector's norm, where an
    isotropic direction carries far less (so the check has power)."""
    d = 32
    x = _anisotropic(d=d)
    top = np.linalg.svd(x - x.mean(0), full_matrices=False)[2]
    dirs = {  # directions on high-variance axes, as emotion directions are
        "gratitude": top[0] + 0.3 * top[5],
        "anger": top[1] + 0.5 * top[3],
        "apology": top[2] + 0.2 * top[9],
    }
    dirs = {c: u / np.linalg.norm(u) for c, u in dirs.items()}
    variance = {c: steering.projected_variance(x, u) for c, u in dirs.items()}
    target = sorted(variance, key=variance.get)[1]
    params = steering.SteeringParams(
        layers=(3,), alphas_relative=(0.25,), alphas_raw=(), components=(), random_seeds=(0, 1, 2)
    )
    norm = 40.0
    configs = steering.build_configs(params, [3], {3: dirs}, {}, {3: norm}, d, 0, {3: x})
    controls = [c for c in configs if c.control]
    emotion = [c for c in configs if c.steered and not c.control]
    assert len(controls) == 3 and len(emotion) == 3
    for c in controls:
        assert np.linalg.norm(c.vector()) == pytest.approx(0.25 * norm)
        assert np.linalg.norm(c.vector()) == pytest.approx(np.linalg.norm(emotion[0].vector()))
        got = steering.projected_variance(x, c.unit)
        assert got == pytest.approx(variance[target], rel=0.05), c.direction
        assert abs(c.unit @ dirs[target]) < 0.9  # a random direction, not the target itself
    iso = np.mean([steering.projected_variance(x, random_unit(d, 0, s, 3)) for s in range(3)])
    assert iso < 0.2 * variance[target]
    _, info = steering.matched_controls(x, dirs, (0, 1, 2), 3)
    assert info["target"] == target
    assert {c.direction for c in controls} == {"random:0", "random:1", "random:2"}


def _band_samples(ppl_anger=8.0, ppl_random=2.2, empty_apology=0):
    """Constructed samples.csv: 6 prompts; unsteered perplexity 2.0; the anger configuration
    at ppl_anger, gratitude at 2.5, apology with ``empty_apology`` empty generations."""
    rows = []
    for i in range(6):
        common = {"dataset": "emotion", "model": "m", "prompt_id": f"p{i}", "frame_id": ""}
        common |= {"alpha_mode": "relative", "distinct_2": 1.0, "vader_compound": 0.1 * i}
        rows.append({**common, "direction": "none", "layer": np.nan, "alpha": 0.0,
                     "condition": np.nan, "control": False, "perplexity": 2.0 + 0.01 * i,
                     "empty_generation": 0.0})  # fmt: skip
        for cond, ppl in (("gratitude", 2.5), ("anger", ppl_anger), ("apology", 2.1)):
            empty = float(cond == "apology" and i < empty_apology)
            rows.append({**common, "direction": cond, "layer": 6, "alpha": 0.25,
                         "condition": cond, "control": False, "perplexity": ppl + 0.01 * i,
                         "empty_generation": empty, "marker_" + cond: 1.0})  # fmt: skip
        for seed in (0, 1):
            rows.append({**common, "direction": f"random:{seed}", "layer": 6, "alpha": 0.25,
                         "condition": np.nan, "control": True, "perplexity": ppl_random,
                         "empty_generation": 0.0, "seed": seed})  # fmt: skip
    return pd.DataFrame(rows).fillna({"marker_gratitude": 0.0, "marker_anger": 0.0,
                                      "marker_apology": 0.0})  # fmt: skip


def test_note_marks_a_configuration_outside_the_fluency_band():
    band = steering.FluencyBand(max_perplexity_ratio=3.0, max_empty_rate=0.25,
                                min_distinct_2_ratio=0.5)  # fmt: skip
    m = steering.sample_measurements(_band_samples(empty_apology=3), ["vader_compound"], band)
    assert {"unit_kind", "note"} <= set(m.columns)
    assert set(m["unit_kind"]) == {"prompt"}
    note = m.groupby("condition")["note"].agg(set).to_dict()
    assert note["gratitude"] == {""}  # ppl x1.25: inside
    assert note["anger"] == {"fluency outside band (ppl x4.0)"}  # 8.025 / 2.025
    assert note["apology"] == {"fluency outside band (empty 50%)"}  # 3 of 6 empty
    # every arm and metric of a configuration carries its note (group-constant)
    anger = m[m["condition"] == "anger"]
    assert set(anger["arm"]) == {"treatment", "baseline", "control"}
    assert set(m["metric"]) == {"vader_compound", *steering.FLUENCY_METRICS}
    # a control that breaks the text flags the comparison too
    m2 = steering.sample_measurements(_band_samples(ppl_random=30.0), ["vader_compound"], band)
    g = m2[m2["condition"] == "gratitude"]["note"].unique().tolist()
    assert g == ["control fluency outside band (ppl x14.8)"]  # 30 / 2.025
    # and a wider band lets the anger configuration in
    wide = steering.FluencyBand(5.0, 0.25, 0.5)
    m3 = steering.sample_measurements(_band_samples(), ["vader_compound"], wide)
    assert set(m3[m3["condition"] == "anger"]["note"]) == {""}
    table = steering.fluency_table(_band_samples(), band).set_index("direction")
    assert table.loc["anger", "perplexity_ratio"] == pytest.approx(8.025 / 2.025)
    assert table.loc["none", "note"] == ""


def test_units_are_frames_when_several_prompts_share_a_frame():
    s = _band_samples()
    assert steering.prompt_units(s)[1] == "prompt"
    frames = {"p0": "f1", "p1": "f1", "p2": "f2"}
    s["frame_id"] = s["prompt_id"].map(frames).fillna("")
    units, kind = steering.prompt_units(s)
    assert kind == "frame"
    assert dict(zip(s["prompt_id"], units, strict=True)) == {
        "p0": "f1", "p1": "f1", "p2": "f2", "p3": "p3", "p4": "p4", "p5": "p5"
    }  # fmt: skip
    m = steering.sample_measurements(s, ["vader_compound"])
    assert set(m["unit_kind"]) == {"frame"} and "f1" in set(m["unit"])


def test_params_errors_name_the_key():
    with pytest.raises(ValueError, match="steering.position"):
        steering.SteeringParams(position="mean")
    with pytest.raises(ValueError, match="steering.layers: relative depth 1.5"):
        steering.SteeringParams(layers=(1.5,))
    with pytest.raises(ValueError, match="steering.prompt_template"):
        steering.SteeringParams(prompt_template="no field")


def test_truncate_at_eos_and_select_prompts():
    assert truncate_at_eos([5, 6, 2, 7, 2], {2}) == [5, 6]
    assert truncate_at_eos([2, 5], {2}) == []
    rows = [
        {"sample_id": "b", "label": "neutral", "split": "test", "text": "x"},
        {"sample_id": "a", "label": "neutral", "split": "test", "text": "y"},
        {"sample_id": "c", "label": "neutral", "split": "train", "text": "z"},
        {"sample_id": "d", "label": "anger", "split": "test", "text": "w"},
    ]
    assert [r["sample_id"] for r in steering.select_prompts(rows, "neutral", 5)] == ["a", "b"]
    rows += [{"sample_id": f"f{i}.neutral", "frame_id": f"f{i}", "label": "neutral",
              "split": "test", "text": "v"} for i in range(3)]  # fmt: skip
    picked = [r["sample_id"] for r in steering.select_prompts(rows, "neutral", 4)]
    assert picked == ["f0.neutral", "a", "f1.neutral", "b"]  # frame and free prompts in turn
    with pytest.raises(steering.SteeringError, match="'joy'"):
        steering.select_prompts(rows, "joy", 5)


# ---------------------------------------------------------------- the whole job on tiny stores
def test_sweep_table_end_to_end(tiny_model_dirs, tiny_rows, tmp_path):
    bridge = models.load_bridge(tiny_model_dirs["llama"])
    acts = tmp_path / "acts.zarr"
    cfg = extract.ExtractConfig(
        n_layers=bridge.cfg.n_layers, store_dtype="float32", model_name="llama"
    )
    extract.extract_to_zarr(bridge, tiny_rows, cfg, acts, progress=False)
    coords = store.read_sample_coords(acts)
    labels, train = coords["label"], coords["split"] == "train"
    conditions = ["gratitude", "anger", "apology"]
    hooks = store.activation_hooks(acts)
    units, subspaces = [], []
    for hook in hooks:
        a = store.read_array(acts, hook)
        units.append(vectors.directions(a, labels, train, conditions, "neutral")[0])
        sub = np.zeros((3, 3, 2, a.shape[-1]))
        for p in range(3):
            for j, c in enumerate(conditions):
                diffs = vectors.difference_vectors(a[:, p], labels, c, "neutral", train)
                sub[p, j] = vectors.pca_subspace(diffs, 2)[0]
        subspaces.append(sub)
    dims = ["hook", "position", "condition"]
    ds = store.vectors_dataset(
        hooks,
        conditions,
        coords,
        {
            "direction": ([*dims, "d_model"], np.stack(units)),
            "direction_vs_others": ([*dims, "d_model"], -np.stack(units)),
            "subspace": ([*dims, "component", "d_model"], np.stack(subspaces)),
        },
        attrs={},
    )
    vec_path = tmp_path / "vectors.zarr"
    store.write_dataset(vec_path, ds)

    params = steering.SteeringParams(
        layers=(0.5,),
        alphas_relative=(0.0, 2.0),
        alphas_raw=(30.0,),
        components=(1,),
        random_seeds=(0, 1),
        n_prompts=3,
        max_new_tokens=5,
        window=2,
        batch_size=16,
    )
    table, summary = steering.sweep_table(
        bridge,
        tiny_rows,
        params,
        dataset="tiny",
        model="llama",
        labels=["gratitude", "anger", "apology", "neutral"],
        baseline="neutral",
        vectors_path=vec_path,
        activations_path=acts,
        progress=False,
    )
    n_dirs = 3 + 3 + 2
    assert summary["layers"] == [1]
    assert len(table) == 3 * (1 + 2 * n_dirs)
    base = table[table.direction == "none"]
    assert len(base) == 3 and base.layer.isna().all() and (base.alpha == 0).all()
    assert set(table.alpha_mode) == {"none", "relative", "raw"}
    assert set(table.direction) >= {"anger", "pc1:apology", "random:1"}
    assert table.prompt_id.nunique() == 3
    assert table.control.sum() == 3 * 2 * 2
    rel = table[table.alpha_mode == "relative"]
    np.testing.assert_allclose(rel.scale, 2.0 * rel.resid_norm)
    norm = steering.mean_residual_norm(store.read_array(acts, "blocks.1.hook_resid_pre"), train)
    np.testing.assert_allclose(rel.resid_norm, norm)
    for col in ("vader_compound", "nrc_joy", "polite_gratitude", "perplexity", "distinct_2"):
        assert col in table.columns
    for col in ("perplexity", "distinct_2", "repetition_rate", "empty_generation"):
        assert np.isfinite(table[col]).all(), col  # never NaN, empty generations included
    assert (table.perplexity > 1).all()
    np.testing.assert_array_equal(table.empty_generation, (table.n_tokens == 0).astype(float))
    assert "frame_id" in table.columns
    # the controls carry the variance the layer's median emotion direction carries
    var = summary["controls"]["per_layer"]["1"]
    target = sorted(var[c] for c in conditions)[1]
    for seed in (0, 1):
        assert var[f"random:{seed}"] == pytest.approx(target, rel=0.05)
    m = steering.sample_measurements(table, ["vader_compound"])
    assert set(m["unit_kind"]) == {"prompt"} and "note" in m
    assert set(m["metric"]) == {"vader_compound", "perplexity", "distinct_2", "empty_generation"}
    # direction_contrast picks the vectors-store variable; a missing one names it and the rule
    dirs, _, _ = steering.load_directions(vec_path, acts, [1], conditions, "last", (), "vs_others")
    plain, _, _ = steering.load_directions(vec_path, acts, [1], conditions, "last")
    np.testing.assert_allclose(dirs[1]["anger"], -plain[1]["anger"])
    with pytest.raises(steering.SteeringError, match=r"no variable 'direction_probe'.*directions"):
        steering.load_directions(vec_path, acts, [1], conditions, "last", (), "probe")
    assert table.layer.dtype == pd.Int64Dtype() and table.seed.dtype == pd.Int64Dtype()
    csv = tmp_path / "samples.csv"
    table.to_csv(csv, index=False)
    back = pd.read_csv(csv)
    assert back.layer.isna().sum() == 3 and back.dropna(subset=["layer"]).layer.eq(1).all()


# ---------------------------------------------------------------- VLM descriptions
def test_vlm_description_steering_zero_alpha_changes_nothing(tmp_path):
    src = build_llava_folder(tmp_path / "src")
    spec = models.ModelSpec("tiny-llava", str(src), family="vlm", backend="hf")
    models.prepare_model(spec, tmp_path / "llava")
    vm = models.load_vision_model(tmp_path / "llava", "tiny-llava")
    hooks = vm.hook_names()
    tower = steering.description_hooks(hooks, [], hooks[-1])
    assert tower == ["vision.blocks.1.hook_resid_post"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    pairs = [
        ImagePair(f"p{k}.poor", f"p{k}", "exposure", (-1.0) ** k, 2 * k, 2 * k + 1) for k in (0, 1)
    ]
    cfg = steering.VisionSteerConfig(alphas_relative=(0.0, 40.0), random_seeds=(0,))
    x = {tower[0]: _anisotropic(n=40, d=32)}
    rows = steering.run_descriptions(
        vm, images, pairs, {(tower[0], "exposure"): _unit(32)}, tower, {tower[0]: 1.0}, cfg, 4,
        control_x=x,
    )  # fmt: skip
    assert len(rows) == 2 * 2 * 2  # alphas x (attribute, random) x pairs
    zero = [r for r in rows if r["alpha"] == 0.0]
    assert all(r["tokens_steered"] == r["tokens_unsteered"] for r in zero)
    assert all(r["description_changed"] == 0.0 for r in zero)
    assert any(r["description_changed"] > 0 for r in rows if r["alpha"] > 0)
    m = steering.description_measurement_rows(rows, "d", "tiny-llava", "mean")
    assert {r["arm"] for r in m} == {"treatment", "control", "baseline"}
    assert {r["unit"] for r in m} == {"p0", "p1"} and {r["unit_kind"] for r in m} == {"photo"}
