"""FLINT — a Framework to Learn with INTerpretation (Parekh, Mozharovskyi, d'Alché-Buc, NeurIPS 2021).

A predictor f and an interpreter g = h ∘ Φ are trained together (joint FLINT) or g alone against a frozen f
(post-hoc FLINT). This module is the registered explainer (``@register("flint")``), its request parameters and its
checkpoint; the pieces live beside it in this package, one concern each, each importing only those listed above it:

* ``config``: the schedules, FLINT, optimiser, AM+PI, pictures and job sections (``FlintJobConfig``; no torch);
* ``model``: Ψ (attribute functions), h (interpreter), d (decoder), ``FlintModel``, ``build_flint``;
* ``losses``: the five loss terms;
* ``am``: activation maximisation with partial initialisation (AM+PI);
* ``interpretation``: contributions, relevance, local / global interpretations, CNS, test metrics;
* ``pictures``: the MAS and AM+PI tiles grown once after training and kept in the checkpoint (``PICTURES_FILE``);
* ``training``: one epoch, evaluation, the Ray-free loop and ``finalize`` (global relevance, MAS);
* ``plots`` (above this module): the pictures.

Loading the data and f is the caller's (``jobs/flint_inputs.py``); matching learned attributes to the scenes
dataset's ground truth is a metric (``interp_ray.metrics.scene_attributes``).
"""

from __future__ import annotations

import io
import threading
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from interp_ray.errors import UserError
from interp_ray.explainers.base import (Explainer, Explanation, OwnPredictor, parse_params, register,
                                        summary_lines)
from interp_ray.explainers.flint.am import activation_maximisation
from interp_ray.explainers.flint.config import AMSection, FlintJobConfig
from interp_ray.explainers.flint.interpretation import (contributions, global_interpretation, interpreter_weight,
                                                        local_interpretation, relevance)
from interp_ray.explainers.flint.model import FlintModel, build_flint
from interp_ray.explainers.flint.pictures import FlintPictures, grow_pictures, read_pictures
from interp_ray.explainers.flint.training import FlintInputs, FlintSetup, finalize, finalize_from_store, train_local


CHECKPOINT_KIND = "flint"
MAS_FILE = "mas.npz"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def attribute_names_for(n: int) -> list[str]:
    width = len(str(n - 1))
    return [f"phi_{j:0{width}d}" for j in range(n)]


def save_flint(path, model: FlintModel, *, spec: dict[str, Any], predictor_spec: dict[str, Any],
               class_names: Sequence[str], mode: str, tau: float = 2.0, data: dict | None = None,
               metrics: dict | None = None, predictor_digest: str | None = None,
               mas_images: np.ndarray | None = None, attribute_names: Sequence[str] | None = None,
               attribute_matches: list | None = None, am: dict | None = None,
               pictures: FlintPictures | None = None) -> str:
    """Write a FLINT checkpoint. ``pictures`` (grown once after training) go in ``pictures.npz``, which the config
    names with its sha256, so the checkpoint's digest covers them."""
    from interp_ray.checkpoint import save_checkpoint

    model = getattr(model, "module", model)
    files = {}
    if mas_images is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=np.asarray(mas_images, dtype=np.float32))
        files[MAS_FILE] = buf.getvalue()
    record = None
    if pictures is not None:
        data_bytes = pictures.to_bytes()
        record = pictures.record(data_bytes)
        files[record["file"]] = data_bytes
    config = {"model": predictor_spec, "flint": spec, "class_names": list(class_names), "mode": mode, "tau": tau,
              "attribute_names": list(attribute_names or attribute_names_for(model.n_attributes)),
              "data": data or {}, "metrics": metrics or {}, "predictor_digest": predictor_digest,
              "attribute_matches": attribute_matches, "am": am, "pictures": record}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, config=config, state_dict=model.state_dict(), files=files)


# ---------------------------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------------------------

class FlintParams(BaseModel):
    """Per-request settings of FLINT."""

    model_config = ConfigDict(extra="forbid")

    tau: float | None = Field(None, gt=0, description="relevance threshold 1/τ; default: the checkpoint's τ")
    target: int = Field(-1, ge=-1, description="class to interpret; -1 = the class the interpreter g predicts")


@register("flint")
class FlintExplainer(Explainer):
    """FLINT (Parekh et al., NeurIPS'21): relevant learned attributes of the interpreter g = h∘Ψ for an input."""

    name = "flint"
    needs = frozenset({"image"})   # the checkpoint carries its own predictor
    produces = frozenset({"attributes"})
    learned = True
    Params = FlintParams
    # The attribute pictures are grown by activation maximisation (AM+PI); its settings are the drawing parameters
    # (the CLI's --draw), over the checkpoint's own (``am_settings``).
    Drawing = AMSection
    summary_skips = frozenset({"phi", "relevance", "attribute_labels", "class_attributes", "interpreter_probability",
                               "predictor_class", "predictor_probability", "agrees", "predictor_class_name",
                               "interpreter_class"})

    def __init__(self, flint: FlintModel, *, class_names: Sequence[str] | None = None,
                 attribute_names: Sequence[str] | None = None, tau: float = 2.0, config: dict | None = None,
                 mas_images: np.ndarray | None = None, pictures: FlintPictures | None = None):
        self.flint = flint.eval()
        self.model = flint.predictor  # the classifier explained; its input_shape tells callers what to feed
        self.class_names = list(class_names) if class_names else None
        self.attribute_names = list(attribute_names or attribute_names_for(flint.n_attributes))
        self.tau = float(tau)
        self.config = dict(config or {})
        self.mas_images = mas_images
        self.pictures = pictures          # stored at training time; None in checkpoints written before
        self._grown: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # attribute → tiles grown here (no stored ones)
        self._grow_lock = threading.Lock()

    # -- learned state ------------------------------------------------------------------------------------------
    def fit(self, data: Any = None, **kwargs: Any) -> "FlintExplainer":
        """Train a new FLINT without Ray: ``fit(inputs, config=FlintJobConfig | dict)``, ``inputs`` the
        ``FlintInputs`` (f and the splits) the config names (``jobs.flint_inputs.flint_inputs(cfg)`` loads them);
        post hoc, ``stores=`` gives the train and val activation stores. Replaces this explainer's state with the
        trained one."""
        if not isinstance(data, FlintInputs):
            raise UserError(f"FlintExplainer.fit takes FlintInputs (f and the splits), not {type(data).__name__}; "
                            "jobs.flint_inputs.flint_inputs(config) loads them")
        cfg = kwargs.get("config")
        cfg = cfg if isinstance(cfg, FlintJobConfig) else FlintJobConfig.model_validate(cfg or {})
        trained = train_explainer(cfg, data, stores=kwargs.get("stores"))[0]
        self.__dict__.update(trained.__dict__)
        return self

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """A random-weight FLINT over the classifier (plumbing only): the conformance suite's specimen."""
        from interp_ray.checkpoint import load_classifier
        from interp_ray.explainers.flint.config import FlintSection
        from interp_ray.explainers.flint.model import resolved_flint_spec

        loaded = load_classifier(classifier)
        torch.manual_seed(1)
        spec = resolved_flint_spec(loaded.model, FlintSection())
        save_flint(path, build_flint(loaded.model, spec), spec=spec, predictor_spec=loaded.config["model"],
                   class_names=loaded.class_names, mode="joint")
        return str(path)

    def save(self, path: str) -> str:
        return save_flint(path, self.flint, spec=self.config.get("flint", {}),
                          predictor_spec=self.config.get("model", {}), class_names=self.class_names or [],
                          mode=self.config.get("mode", "joint"), tau=self.tau, data=self.config.get("data"),
                          metrics=self.config.get("metrics"), predictor_digest=self.config.get("predictor_digest"),
                          mas_images=self.mas_images, attribute_names=self.attribute_names,
                          attribute_matches=self.config.get("attribute_matches"), am=self.config.get("am"),
                          pictures=self.pictures)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "FlintExplainer":
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.models import build_model

        ck = read_checkpoint(path, kind=CHECKPOINT_KIND)
        spec = dict(ck.config["flint"])
        predictor = build_model(ck.config["model"]["name"], **ck.config["model"].get("options", {}))
        model = build_flint(predictor, spec)
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise UserError(f"checkpoint {path}: weights do not fit the FLINT model ({first})") from None
        mas = None
        if MAS_FILE in ck.files:
            mas = np.load(io.BytesIO(ck.files[MAS_FILE]))["images"]
        device = kwargs.get("device", "cpu")
        return cls(model.to(device).eval(), class_names=ck.config.get("class_names"),
                   attribute_names=ck.config.get("attribute_names"), tau=kwargs.get("tau", ck.config.get("tau", 2.0)),
                   config=ck.config, mas_images=mas, pictures=read_pictures(ck.files, ck.config.get("pictures"), path))

    # -- interpretation ------------------------------------------------------------------------------------------
    @property
    def weight(self) -> np.ndarray:
        return interpreter_weight(self.flint)

    @torch.no_grad()
    def interpret(self, x: torch.Tensor, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Arrays for a batch: phi, f and g probabilities, the interpreted classes, contributions and relevance."""
        from interp_ray.explainers._common import eval_mode

        with eval_mode(self.flint):
            out = self.flint(x)
        pf, pg = F.softmax(out.logits, 1).cpu().numpy(), F.softmax(out.interp_logits, 1).cpu().numpy()
        classes = pg.argmax(1)
        if targets is not None:
            bad = targets[(targets < -1) | (targets >= self.flint.num_classes)]
            if bad.size:
                raise UserError(f"target class {int(bad[0])} is out of range; classes are "
                                f"0..{self.flint.num_classes - 1} (or -1 for g's prediction)")
            classes = np.where(targets >= 0, targets, classes)
        phi = out.phi.cpu().numpy()
        alpha = contributions(phi, self.weight, classes)
        return {"phi": phi, "prob_f": pf, "prob_g": pg, "classes": classes, "alpha": alpha, "r": relevance(alpha)}

    def own_predictor(self) -> OwnPredictor:
        """FLINT explains its predictor f (the interpreter g mimics f): trained with g (joint, BASE), or a frozen
        copy of a classifier (post hoc; the session then finds it is the served classifier's weights)."""
        mode = self.config.get("mode", "joint")
        about = {"posthoc": "FLINT's predictor f, a frozen copy of the classifier it was trained for",
                 "base": "FLINT's predictor f, trained alone (BASE)"}.get(
                     mode, "FLINT's predictor f, trained jointly with its interpreter g")
        return OwnPredictor(self.flint.predictor, about, self.class_names)

    def checkpoint_defaults(self) -> dict[str, Any]:
        return {"tau": self.tau}   # the τ the job chose (flint.tau), not the class's 2

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | dict | None = None) -> list[Explanation]:
        from interp_ray.explainers._common import prepare_images, row_targets

        p = self.parse_params(params)
        tau = p.tau or self.tau
        x = prepare_images(self.model, batch)
        res = self.interpret(x, row_targets(batch, len(x), p.target))
        grel = self.flint.global_relevance.cpu().numpy()
        out = []
        for i in range(len(x)):
            c = int(res["classes"][i])
            local = local_interpretation(res["r"][i], tau)
            glob = [self.attribute_names[j] for j in np.flatnonzero(grel[c] > 1.0 / tau)] if grel.any() else None
            out.append(Explanation(
                label=c, label_name=self._class_name(c), method=self.name,
                attributes={self.attribute_names[j]: round(v, 6) for j, v in local},
                extra={"tau": tau, "interpreter_class": int(res["prob_g"][i].argmax()),
                       "interpreter_probability": float(res["prob_g"][i].max()),
                       "predictor_class": int(res["prob_f"][i].argmax()),
                       "predictor_class_name": self._class_name(int(res["prob_f"][i].argmax())),
                       "predictor_probability": float(res["prob_f"][i].max()),
                       "agrees": bool(res["prob_g"][i].argmax() == res["prob_f"][i].argmax()),
                       "phi": res["phi"][i].astype(np.float32).tolist(),
                       "relevance": res["r"][i].astype(np.float32).tolist(),
                       "class_attributes": glob,
                       "attribute_labels": self.attribute_labels()}))
        return out

    # -- how an explanation reads and looks ----------------------------------------------------------------------

    def summary(self, explanation: Explanation) -> str:
        """The default summary with g's and f's predictions in the head line and the class's global attributes."""
        ex = explanation.extra or {}
        fname = ex.get("predictor_class_name")
        head = (f" (interpreter g p={ex['interpreter_probability']:.3f}; predictor f: {ex['predictor_class']}"
                f"{f' {fname!r}' if fname is not None else ''} p={ex['predictor_probability']:.3f}, "
                f"{'agrees' if ex.get('agrees') else 'DISAGREES'})") if "interpreter_probability" in ex else ""
        lines = summary_lines(explanation, self.name, head=head, skip=self.summary_skips)
        if ex.get("class_attributes") is not None:
            at = 1 + (1 + len(explanation.attributes) if explanation.attributes is not None else 0)
            lines.insert(at, f"  attributes of class {explanation.label_name or explanation.label} (global): "
                             + (", ".join(ex["class_attributes"]) or "none"))
        return "\n".join(lines)

    def parse_drawing(self, drawing: BaseModel | dict[str, Any] | None) -> AMSection:
        """AM+PI settings: the checkpoint's, then ``drawing``'s; a bad one is a UserError naming the field."""
        if isinstance(drawing, AMSection):
            return drawing
        given = drawing.model_dump() if isinstance(drawing, BaseModel) else dict(drawing or {})
        return parse_params(AMSection, {**self.am_settings().model_dump(), **given}, method=self.name)

    def draw(self, image: np.ndarray, explanation: Explanation, **drawing: Any) -> Any:
        """The local interpretation sheet: the relevance of every attribute with the 1/τ line, and per relevant
        attribute its pictures. With no drawing parameters, they are the checkpoint's stored tiles (``tiles``: the
        MAS of the explained class and attribute and the AM+PI images grown from them, computed once); given AM+PI
        settings, the attribute's AM+PI picture is grown from this input with them (hundreds of steps each)."""
        from interp_ray.explainers.flint.plots import local_sheet

        fig, _ = local_sheet(self, image, tau=(explanation.extra or {}).get("tau"), target=explanation.label,
                             am=self.parse_drawing(drawing) if drawing else None)
        return fig

    def grow_pictures(self, pairs: Sequence[tuple[int, int, np.ndarray]] = (), am: AMSection | None = None
                      ) -> FlintPictures:
        """Grow the stored pictures (after training: ``finalize``'s MAS and ``pairs``) with the checkpoint's AM+PI
        settings (or ``am``); kept in ``self.pictures`` and saved with the checkpoint."""
        if self.mas_images is None:
            raise UserError("FLINT's pictures are grown from its maximum-activating samples: compute them first "
                            "(training.finalize)")
        self.pictures = grow_pictures(self.flint, self.mas_images, am or self.am_settings(), pairs=pairs)
        return self.pictures

    def tiles(self, cls: int, j: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(MAS, AM+PI images, "class" or "attribute") of attribute ``j`` for class ``cls``: ``tiles_for``."""
        return self.tiles_for(cls, [j])[0]

    def tiles_for(self, cls: int, attributes: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """Per attribute, (MAS, AM+PI images, "class" or "attribute") for class ``cls``: the stored ones; for a
        checkpoint written before pictures were stored, the attribute's grown from its MAS (from noise when it has
        none) on first use, those missing in one batched AM+PI run, and kept for this process's later requests."""
        if self.pictures is not None:
            return [self.pictures.tiles(cls, j) for j in attributes]
        with self._grow_lock:   # one replica thread grows an attribute once; the others wait and reuse it
            missing = [j for j in dict.fromkeys(attributes) if j not in self._grown]
            if missing:
                am = self.am_settings()
                if self.mas_images is not None:
                    mas = np.asarray(self.mas_images, dtype=np.float32)[missing]
                    seeds = torch.from_numpy(np.ascontiguousarray(mas.reshape(-1, *mas.shape[2:])))
                    rows = [j for j in missing for _ in range(mas.shape[1])]
                    grown = activation_maximisation(self.flint, rows, seeds, am).cpu().numpy().reshape(mas.shape)
                else:
                    shape = (len(missing), *self.flint.predictor.input_shape)
                    grown = activation_maximisation(self.flint, missing, None, am, shape=shape).cpu().numpy()
                    grown = grown[:, None]
                    mas = np.zeros((len(missing), 0, *shape[1:]), dtype=np.float32)
                for k, j in enumerate(missing):
                    self._grown[j] = (mas[k], grown[k])
            return [(*self._grown[j], "attribute") for j in attributes]

    def am_settings(self, **overrides: Any) -> AMSection:
        """AM+PI settings: the checkpoint's (from the training config's ``pictures.am``), then ``overrides``."""
        return AMSection.model_validate({**(self.config.get("am") or {}), **overrides})

    def _class_name(self, c: int) -> str | None:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else None

    def attribute_labels(self) -> dict[str, str] | None:
        """Ground-truth matches of the attributes (scenes), name → "kind=value (ρ=…)", when the checkpoint has them."""
        matches = self.config.get("attribute_matches")
        if not matches:
            return None
        return {m["attribute"]: f"{m['match']} (rho={m['corr']:.2f})" for m in matches if m.get("match")}

    def global_interpretation(self, tau: float | None = None) -> dict[str, list[tuple[str, float]]]:
        """class name → [(attribute, r_{j,c})] above 1/τ (from the relevance stored at training time)."""
        rel = self.flint.global_relevance.cpu().numpy()
        out: dict[str, list[tuple[str, float]]] = {}
        for c, j, v in global_interpretation(rel, tau or self.tau):
            out.setdefault(self._class_name(c) or str(c), []).append((self.attribute_names[j], v))
        return out


# ---------------------------------------------------------------------------------------------------------------
# End to end without Ray (benchmarks, ``fit``)
# ---------------------------------------------------------------------------------------------------------------

def explainer_from_setup(st: FlintSetup, cfg: FlintJobConfig, extra: dict[str, Any] | None = None,
                         metrics: dict | None = None) -> FlintExplainer:
    extra = extra or {}
    config = {"model": st.predictor_spec, "flint": st.spec, "mode": cfg.flint.mode, "data": cfg.data.model_dump(),
              "metrics": metrics or {}, "predictor_digest": st.predictor_digest,
              "attribute_matches": extra.get("attribute_matches"), "am": cfg.pictures.am.model_dump(mode="json")}
    explainer = FlintExplainer(st.model.cpu().eval(), class_names=st.train_ds.class_names, tau=cfg.flint.tau,
                               config=config, mas_images=extra.get("mas_images"))
    if cfg.pictures.stored and explainer.mas_images is not None:
        explainer.grow_pictures(extra.get("pairs", ()), cfg.pictures.am)
    return explainer


def train_explainer(cfg: FlintJobConfig, inputs: FlintInputs, *, log=None, stores: dict[str, Any] | None = None
                    ) -> tuple[FlintExplainer, list[dict[str, Any]]]:
    """Train on ``inputs`` (``train_local``), then compute global relevance and MAS (``finalize``): a ready
    explainer. Post hoc, both read the ``stores`` (train and val ``ActivationStore``s of f's taps and the input),
    not the images."""
    st, history = train_local(cfg, inputs, log=log, stores=stores)
    st.model.cpu()
    pairs = cfg.pictures.max_pairs
    extra = (finalize_from_store(st.model, stores["train"], cfg.flint, max_pairs=pairs) if cfg.flint.mode == "posthoc"
             else finalize(st.model, st.train_ds, cfg.flint, max_pairs=pairs))
    return explainer_from_setup(st, cfg, extra, {"history": history[-1:] if history else []}), history
