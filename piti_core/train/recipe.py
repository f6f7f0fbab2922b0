"""The training recipes as data: which stages run, what each trains, with which settings.

PITI (spec §5–6), from a pretrained prior:

| stage        | model     | trains               | lr                | cond. dropout | timesteps          | encoder starts from |
|--------------|-----------|----------------------|-------------------|---------------|--------------------|---------------------|
| stage1       | base      | task encoder         | train.lr          | 0             | train.timestep_sampler | random          |
| stage1-cont  | base      | task encoder         | train.cont_lr     | train.uncond_p| train.timestep_sampler | stage1 (EMA)    |
| stage2       | base      | encoder + decoder    | train.decoder_lr  | train.uncond_p| train.timestep_sampler | stage1-cont (EMA)|
| upsampler    | upsampler | encoder + decoder    | train.upsampler_lr| 0             | uniform            | random              |

Every base stage starts its decoder from the prior (as the official scripts reload GLIDE's
``base.pt``); the upsampler stage adds degraded low-res inputs and the perceptual + adversarial
losses after ``train.adv_warmup`` steps. Prior pretraining (``piti pretrain``) trains a caption
encoder with each decoder, both from scratch.
"""

from __future__ import annotations

from attrs import frozen

from piti_core.errors import UsageError


@frozen
class Stage:
    name: str
    model: str  # base | upsampler | text_base | text_upsampler
    steps: int
    lr: float  # encoder learning rate
    decoder_lr: float | None  # None: the decoder is frozen (no gradients, no optimizer state)
    uncond_p: float
    timestep_sampler: str
    encoder_init: str | None = None  # earlier stage whose EMA encoder initialises this one
    adversarial: bool = False
    index: int = 0  # position in the full recipe: seeds and checkpoint names use it, also with --stage

    @property
    def trains_decoder(self) -> bool:
        return self.decoder_lr is not None


def stage_parameters(model, stage: Stage) -> tuple[list, list]:
    """``(optimizer groups, frozen modules)`` of ``model`` (a PitiModel) for ``stage``.

    Groups are ``(name, [(qualified name, parameter)], lr)``: the encoder always trains; the decoder
    trains at ``decoder_lr`` or is frozen (``requires_grad`` off: no gradients, no optimizer state, no
    EMA). The flags are set both ways, so a model reused across stages gets the right ones.
    """
    model.encoder.requires_grad_(True)
    model.decoder.requires_grad_(stage.trains_decoder)
    groups = [("encoder", [("encoder." + k, p) for k, p in model.encoder.named_parameters()], stage.lr)]
    if not stage.trains_decoder:
        return groups, [model.decoder]
    groups.append(("decoder", [("decoder." + k, p) for k, p in model.decoder.named_parameters()], stage.decoder_lr))
    return groups, []


def piti_stages(tcfg) -> list[Stage]:
    return [
        Stage("stage1", "base", tcfg.stage1_steps, tcfg.lr, None, 0.0, tcfg.timestep_sampler),
        Stage("stage1-cont", "base", tcfg.stage1_cont_steps, tcfg.cont_lr, None, tcfg.uncond_p,
              tcfg.timestep_sampler, encoder_init="stage1"),
        Stage("stage2", "base", tcfg.stage2_steps, tcfg.decoder_lr, tcfg.decoder_lr, tcfg.uncond_p,
              tcfg.timestep_sampler, encoder_init="stage1-cont"),
        Stage("upsampler", "upsampler", tcfg.upsampler_steps, tcfg.upsampler_lr, tcfg.upsampler_lr, 0.0,
              "uniform", adversarial=True),
    ]


def pretrain_stages(tcfg) -> list[Stage]:
    return [
        Stage("prior-base", "text_base", tcfg.pretrain_steps, tcfg.pretrain_lr, tcfg.pretrain_lr,
              tcfg.uncond_p, tcfg.timestep_sampler),
        Stage("prior-upsampler", "text_upsampler", tcfg.pretrain_steps, tcfg.pretrain_lr, tcfg.pretrain_lr,
              0.0, "uniform"),
    ]


def _numbered(stages: list[Stage]) -> list[Stage]:
    import attrs

    return [attrs.evolve(s, index=i) for i, s in enumerate(stages)]


def select(stages: list[Stage], only: str | None) -> list[Stage]:
    """All stages with steps > 0, or only the one named ``only``."""
    stages = _numbered(stages)
    if only:
        names = [s.name for s in stages]
        if only not in names:
            raise UsageError(f"unknown stage '{only}'; valid stages: {', '.join(names)}")
        return [s for s in stages if s.name == only]
    import attrs

    dropped = {s.name: s for s in stages if s.steps <= 0}
    kept = []
    for s in stages:
        if s.steps <= 0:
            continue
        init = s.encoder_init
        while init in dropped:  # a skipped stage hands on what it would have started from
            init = dropped[init].encoder_init
        kept.append(attrs.evolve(s, encoder_init=init))
    return kept
