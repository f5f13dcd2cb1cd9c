"""The study's questions as :class:`~circuitflow.report.answers.Question` objects: which rows
of ``effect_sizes.csv`` answer each, against which null, and what one counted thing is."""

from __future__ import annotations

from circuitflow.report.answers import ATTRIBUTE_GROUPS, Claim, Question

PHRASE_POSITIONS = ("phrase_first", "phrase_mid", "phrase_last", "phrase_block")
FLOW_POSITIONS = (*PHRASE_POSITIONS, "post_phrase", "suffix_mid", "last")
TONE_METRICS = ("marker_target", "vader_compound", "afinn", "polite_score")


def _emotion_questions(site: str, position: str) -> list[Question]:
    fixed = (("site", site), ("position", position))
    directions = Question(
        key="directions",
        title="Are emotions stable directions, layer by layer?",
        ask="Does a direction learned on train prompts separate each emotion on held-out "
        "prompts at each layer, and is it specific to that emotion?",
        claims=(
            Claim(
                key="separation",
                claim="separation of every emotion's test prompts from neutral ones along its "
                f"train-split emotion-vs-neutral direction ({site}, {position} token)",
                null="no difference from neutral test samples",
                phase="vectors",
                metrics=("projection_on_mean_diff",),
                comparison="vs_baseline",
                where=fixed,
                all_conditions=True,
            ),
            Claim(
                key="specificity",
                claim="separation of every emotion from the other emotions along its "
                "emotion-vs-others direction",
                null="no difference from the other emotions' test samples",
                phase="vectors",
                metrics=("specificity_projection",),
                comparison="vs_baseline",
                where=fixed,
                setting=(("contrast", "vs_others"),),
                all_conditions=True,
            ),
            Claim(
                key="directional_ablation",
                claim="a drop of the emotion probe's p(true) when the emotion direction or "
                "subspace is ablated",
                null="ablating random directions / subspaces of equal dimension",
                phase="patching",
                metrics=("ablation_probe_p_true",),
                comparison="vs_random_control",
                sign=-1,
                things="ablations",
                by=("condition", "setting"),
                label="{condition} {ablation} k={k}",
            ),
        ),
    )
    flow = Question(
        key="flow",
        title="Where is each emotion written in, carried and read out?",
        ask="Layer by layer and token by token, where does patching the residual stream from "
        "the emotional prompt into its neutral counterfactual restore the emotional lean?",
        claims=(
            Claim(
                key="readout",
                claim="recovery of every emotion's lean when the last token's residual stream "
                "is patched from the emotional into the neutral run",
                null="the unpatched run (recovery 0)",
                phase="patching",
                metrics=("recovery_clean_to_corrupted",),
                comparison="vs_baseline",
                where=(("position", "last"),),
                all_conditions=True,
            ),
            Claim(
                key="written_in",
                claim="recovery of an emotion's lean when the residual stream at the emotion "
                "phrase's tokens is patched",
                null="the unpatched run (recovery 0)",
                phase="patching",
                metrics=("recovery_clean_to_corrupted",),
                comparison="vs_baseline",
                where=(("position", PHRASE_POSITIONS),),
                things="layer x position sites",
                by=("layer", "position"),
                label="L{layer} {position}",
            ),
            Claim(
                key="flow_grid",
                claim="recovery estimated by attribution patching (AtP) at a residual site",
                null="the unpatched run (recovery 0)",
                phase="patching",
                metrics=("atp_recovery_clean_to_corrupted",),
                comparison="vs_baseline",
                things="layer x position sites",
                by=("layer", "position"),
                label="L{layer} {position}",
            ),
        ),
    )
    pair = (("position", position),)
    shared = Question(
        key="shared",
        title="Are the emotion subspaces shared across models after alignment?",
        ask="Once a map fit on neutral samples carries one model's residual stream into the "
        "other's, does each emotion's subspace land on the other model's emotion subspace "
        "more than subspaces of permuted labels do?",
        claims=(
            Claim(
                key="overlap_vs_permuted",
                claim="overlap of an emotion's subspaces across models after the neutral-space "
                "map, above permuted-label subspaces through the same map",
                null="the same fitted map applied to permuted-label subspaces",
                phase="alignment",
                metrics=("overlap_after",),
                comparison="vs_permuted_labels",
                where=pair,
                things="tests (layer pair x emotion x map x k)",
                by=("layer", "condition", "setting"),
                label="{condition} L{layer}/L{layer_b} {method} k={k}",
            ),
            Claim(
                key="cka",
                claim="representational similarity of the two models (debiased CKA)",
                null="shuffled sample pairings",
                phase="alignment",
                metrics=("cka_debiased",),
                comparison="vs_shuffled_pairs",
                where=pair,
                things="layer pairs",
                by=("layer", "setting"),
                label="L{layer}/L{layer_b}",
            ),
        ),
    )
    steering = Question(
        key="steering",
        title="Does steering along an emotion direction change the output's tone?",
        ask="Adding the emotion direction during generation: does the text carry more of that "
        "emotion than when a random direction of the same norm is added?",
        claims=(
            Claim(
                key="markers",
                claim="more of the steered emotion's marker words in fluent generations",
                null="random directions at the same layer and scale, same prompts",
                phase="steering",
                metrics=("marker_target",),
                comparison="vs_random_control",
                setting=(("direction", "=condition"),),
                things="settings (layer x emotion x alpha)",
                by=("layer", "condition", "setting"),
                label="{condition} L{layer} alpha={alpha}",
                exclude_note="fluency outside band",
            ),
            Claim(
                key="sentiment",
                claim="a shift of the generations' VADER sentiment",
                null="random directions at the same layer and scale, same prompts",
                phase="steering",
                metrics=("vader_compound",),
                comparison="vs_random_control",
                sign=0,
                setting=(("direction", "=condition"),),
                things="settings (layer x emotion x alpha)",
                by=("layer", "condition", "setting"),
                label="{condition} L{layer} alpha={alpha}",
                exclude_note="fluency outside band",
            ),
            Claim(
                key="politeness",
                claim="a shift of the generations' politeness score",
                null="random directions at the same layer and scale, same prompts",
                phase="steering",
                metrics=("polite_score",),
                comparison="vs_random_control",
                sign=0,
                setting=(("direction", "=condition"),),
                things="settings (layer x emotion x alpha)",
                by=("layer", "condition", "setting"),
                label="{condition} L{layer} alpha={alpha}",
                exclude_note="fluency outside band",
            ),
        ),
    )
    heads = Question(
        key="heads",
        title="Which attention heads carry the emotions?",
        ask="Patching one head's output from the emotional run into the neutral one: which "
        "heads restore the emotional lean, and does ablating them remove it?",
        claims=(
            Claim(
                key="head_patching",
                claim="recovery of the emotional lean (pooled over emotions) when one head's "
                "output is patched from the emotional run",
                null="the unpatched run (recovery 0)",
                phase="patching",
                metrics=("head_patch_recovery",),
                comparison="vs_baseline",
                where=(("condition", "all"),),
                things="screened heads",
                by=("layer", "setting"),
                label="L{layer}H{head}",
            ),
            Claim(
                key="head_ablation",
                claim="a change of the emotional lean when one head is mean-ablated",
                null="the unablated run",
                phase="patching",
                metrics=("head_mean_ablation_effect",),
                comparison="vs_baseline",
                sign=0,
                where=(("condition", "all"),),
                things="screened heads",
                by=("layer", "setting"),
                label="L{layer}H{head}",
            ),
        ),
    )
    aligned = Question(
        key="aligned",
        title="Can the emotion subspaces be aligned through a neutral-space map?",
        ask="Does a map fit on neutral samples' paired activations carry an emotion subspace "
        "onto the other model's better than maps fit on shuffled pairings?",
        claims=(
            Claim(
                key="overlap_vs_shuffled",
                claim="overlap of an emotion's subspaces after the neutral-space map, above "
                "maps fit on shuffled pairings",
                null="maps fit on shuffled sample pairings",
                phase="alignment",
                metrics=("overlap_after",),
                comparison="vs_shuffled_pairs",
                where=pair,
                things="tests (layer pair x emotion x map x k)",
                by=("layer", "condition", "setting"),
                label="{condition} L{layer}/L{layer_b} {method} k={k}",
            ),
        ),
    )
    features = Question(
        key="features",
        title="Which SAE features pick out each emotion?",
        ask="Features chosen on train prompts for one emotion: do they tell that emotion's "
        "held-out prompts from neutral ones?",
        claims=(
            Claim(
                key="feature_auroc",
                claim="selectivity (test AUROC away from 0.5) of a feature chosen on train "
                "prompts, every live feature counted in the correction",
                null="neutral test samples (per-sample max activation)",
                phase="sae",
                metrics=("feature_max_activation",),
                comparison="vs_baseline",
                sign=0,
                things="tested features",
                by=("layer", "site", "condition", "setting"),
                label="{condition} {architecture} f{feature}",
            ),
        ),
    )
    return [directions, flow, shared, steering, heads, aligned, features]


def _aesthetic_question(group: str, prefixes: tuple[str, ...]) -> Question:
    by = ("site", "layer")
    label = "{site} L{layer}"
    return Question(
        key=f"aesthetics_{group}",
        title=f"Which layers carry {group}?",
        ask=f"Where along the vision model (and the VLM's language model) can the {group} "
        "edits of a photo be read out, and where does patching or steering the attribute "
        "direction move the aesthetic readout?",
        kind="images",
        conditions=prefixes,
        claims=(
            Claim(
                key=f"{group}_probes",
                claim=f"a lower held-out probe error for the {group} attributes than probes "
                "fit on shuffled targets",
                null="the same probe fit on shuffled train targets",
                phase="probes",
                metrics=("probe_error", "probe_sq_error"),
                comparison="vs_random_control",
                sign=-1,
                things="hooks",
                by=by,
                label=label,
            ),
            Claim(
                key=f"{group}_separation",
                claim=f"separation of the {group} edits from the original photos along the "
                "train-split attribute direction",
                null="no difference from the original photos",
                phase="vectors",
                metrics=("projection_on_mean_diff",),
                comparison="vs_baseline",
                things="hooks",
                by=by,
                label=label,
            ),
            Claim(
                key=f"{group}_patching",
                claim=f"recovery of the aesthetic readout when the {group} direction's "
                "component is patched from the good variant",
                null="random directions",
                phase="patching",
                metrics=("recovery", "recovery_clip_prompts"),
                comparison="vs_random_control",
                things="hooks",
                by=by,
                label=label,
            ),
            Claim(
                key=f"{group}_steering",
                claim=f"a shift of the aesthetic readout towards the original when the "
                f"{group} direction is added",
                null="random directions of equal norm",
                phase="steering",
                metrics=("readout_shift", "readout_shift_clip_prompts"),
                comparison="vs_random_control",
                things="hooks",
                by=by,
                label=label,
            ),
        ),
    )


def _projector_question() -> Question:
    return Question(
        key="projectors",
        title="Which projector carries vision into the language model best?",
        ask="Linear, MLP-2L, C-Abstractor or Perceiver between a frozen encoder and a frozen "
        "LM: which makes held-out captions likelier with the photo's own image than with a "
        "mismatched one?",
        kind="captions",
        claims=(
            Claim(
                key="own_image",
                claim="a lower held-out caption NLL with the photo's own image than with a "
                "mismatched one",
                null="a mismatched test image (same model, same captions)",
                phase="projectors",
                metrics=("caption_nll",),
                comparison="vs_baseline",
                sign=-1,
                where=(("condition", "all"),),
                setting=(("null", "mismatched_image"),),
                things="trained VLMs",
                by=("model",),
                pooled=True,
                label="{model}",
            ),
            Claim(
                key="pairwise_gain",
                claim="a difference in image gain between two projectors",
                null="the other projector on the same photos",
                phase="projectors",
                metrics=("caption_nll_image_gain",),
                comparison="vs_baseline",
                sign=0,
                things="projector pairs",
                by=("setting",),
                pooled=True,
                label="{a} vs {b}",
            ),
            Claim(
                key="retrieval",
                claim="better caption retrieval with the photo's own image",
                null="a mismatched test image",
                phase="projectors",
                metrics=("retrieval_accuracy",),
                comparison="vs_baseline",
                setting=(("null", "mismatched_image"),),
                things="VLM x attribute tests",
                by=("model", "condition"),
                pooled=True,
                label="{model} {condition}",
            ),
        ),
    )


def questions(site: str = "hook_resid_post", position: str = "last") -> tuple[Question, ...]:
    """Every question in report order: the emotion questions (vectors at ``site`` and
    ``position``, alignment at ``position``), one per aesthetic property, the projectors."""
    aesthetic = [_aesthetic_question(g, p) for g, p in ATTRIBUTE_GROUPS.items()]
    return (*_emotion_questions(site, position), *aesthetic, _projector_question())
