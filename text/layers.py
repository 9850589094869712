"""Ordered layer groups (input to output) of the text models, for freezing, gradual unfreezing and
layer-wise LR decay: one function per architecture family, and :func:`layer_groups` choosing among them.

- encoder with a head (BERT-style sequence/token classification, QA, reward heads): embeddings, each
  encoder block, then the head (pooler, classifier, final norms);
- decoder-only LM (Llama, GPT-2): input embeddings, each decoder block, then the head (final norm
  and an untied LM head);
- encoder-decoder (T5, BART, Marian, warm-started EncoderDecoderModel): embeddings, each encoder
  block, each decoder block, then the head.

The blocks of a model are found through :func:`blocks`: the module lists made of the architecture's
block classes, as transformers names them in each model's ``_no_split_modules`` (its own table of
the modules that must stay whole), or as :data:`BLOCK_CLASSES` names them for the architectures
whose transformers classes declare none; for anything else, the longest module list.
"""

from __future__ import annotations

from torch import nn

from omnitune.core.base.errors import OmnituneError
from omnitune.core.base.task import LayerGroup

# The one per-architecture table of the layer groups, keyed by the Hugging Face ``config.model_type``:
# the class names of its blocks, only where transformers' own ``_no_split_modules`` lacks them
# (MarianModel and MarianMTModel declare none). Every other architecture defers to transformers.
BLOCK_CLASSES: dict[str, tuple[str, ...]] = {
    "marian": ("MarianEncoderLayer", "MarianDecoderLayer"),
}


def block_classes(model: nn.Module) -> set[str]:
    """Class names of ``model``'s blocks: ours (:data:`BLOCK_CLASSES`) for its model types, else what
    its transformers classes (and their inner models, e.g. both halves of an EncoderDecoderModel)
    declare in ``_no_split_modules``."""
    names: set[str] = set()
    for m in model.modules():
        config = getattr(m, "config", None)
        own = BLOCK_CLASSES.get(getattr(config, "model_type", None) or "")
        names.update(own if own is not None else (getattr(m, "_no_split_modules", None) or ()))
    return names


def blocks(module: nn.Module, model: nn.Module | None = None, what: str = "blocks") -> nn.ModuleList:
    """The list of blocks inside ``module`` (``model``: where the architecture is read from, default
    ``module``): the longest module list made only of block classes, else the longest module list."""
    names = block_classes(model if model is not None else module)
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m)]
    typed = [m for m in lists if all(type(c).__name__ in names for c in m)]
    found = max(typed or lists, key=len, default=None)
    if not found:
        raise OmnituneError(f"{type(module).__name__}: no list of {what} found for layer groups")
    return found


def encoder_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """An encoder with a head (sequence or token classification): embeddings, each encoder block,
    then the head (pooler, classifier, final norms)."""
    base = model.base_model
    found = blocks(base, model, "encoder blocks")
    in_blocks = {id(p) for p in found.parameters()}
    embed_modules, head_modules = [], []
    for name, module in base.named_children():
        if any(id(p) in in_blocks for p in module.parameters()):
            continue
        (embed_modules if "embed" in name else head_modules).append(module)
    base_ids = {id(p) for p in base.parameters()}
    head_modules += [m for n, m in model.named_children() if not any(id(p) in base_ids for p in m.parameters())]
    # Modules that hold the blocks but also own parameters directly (e.g. a final norm).
    container_extras = [m for m in base.modules() if m is not base and found in list(m.children())]
    for m in container_extras:
        for child in m.children():
            if child is not found:
                head_modules.append(child)
    groups = [LayerGroup("embeddings", embed_modules)]
    groups += [LayerGroup(f"block_{i}", [b]) for i, b in enumerate(found)]
    groups.append(LayerGroup("head", head_modules))
    return groups


def decoder_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """A decoder-only LM: input embeddings, each decoder block, then the head: final norm and the LM
    head, unless the LM head is tied to the input embeddings (then it trains with them, in the first
    group)."""
    inner = model.base_model
    found = blocks(inner, model, "decoder blocks")
    embed = model.get_input_embeddings()
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is embed.weight
    head = [m for n, m in inner.named_children() if m is not found and m is not embed]
    if out_emb is not None and not tied:
        head.append(out_emb)
    return [LayerGroup("embeddings", [embed]), *[LayerGroup(f"block_{i}", [b]) for i, b in enumerate(found)],
            LayerGroup("head", head)]


def encoder_decoder_groups(model: nn.Module) -> list[LayerGroup]:
    """Embeddings, encoder blocks, decoder blocks, head, by parameter identity (tied weights once).
    The encoder's final norm goes with its last block, so freezing the encoder's groups freezes all
    of it; the head is what follows the last decoder block (final norm, an untied LM head and its
    transform). When only an LM head tied to the token embeddings follows the decoder (BART,
    Marian), that shared vocabulary matrix is the head group.

    Groups hold the model's own modules where a module's parameters all fall in one group; the
    rest (a bias beside a tied weight) go in a parameter list, which is not part of the model."""
    encoder, decoder = model.get_encoder(), model.get_decoder()
    enc_blocks, dec_blocks = blocks(encoder, model), blocks(decoder, model)
    names = ["embeddings", *[f"encoder_{i}" for i in range(len(enc_blocks))],
             *[f"decoder_{i}" for i in range(len(dec_blocks))], "head"]
    owner: dict[int, int] = {}

    def claim(params, group: int) -> None:
        for p in params:
            owner.setdefault(id(p), group)

    for i, block in enumerate(enc_blocks):
        claim(block.parameters(), 1 + i)
    for i, block in enumerate(dec_blocks):
        claim(block.parameters(), 1 + len(enc_blocks) + i)
    claim(model.get_input_embeddings().parameters(), 0)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if "embed" in leaf or module is encoder.get_input_embeddings() or module is decoder.get_input_embeddings():
            claim(module.parameters(), 0)
    enc_ids = {id(p) for p in encoder.parameters()}
    last_encoder = len(enc_blocks)
    for p in model.parameters():  # what follows the blocks: the encoder's final norm, the head
        claim([p], last_encoder if id(p) in enc_ids else len(names) - 1)
    if not any(g == len(names) - 1 for g in owner.values()):  # nothing after the decoder but a tied LM head
        for p in model.get_output_embeddings().parameters():  # the vocabulary matrix is the head then
            owner[id(p)] = len(names) - 1
    members: list[list[nn.Module]] = [[] for _ in names]
    placed: set[int] = set()
    for module in model.modules():  # whole modules whose parameters share one group, outermost first
        params = list(module.parameters())
        if not params or any(id(p) in placed for p in params):
            continue
        groups = {owner[id(p)] for p in params}
        if len(groups) == 1:
            members[groups.pop()].append(module)
            placed.update(id(p) for p in params)
    loose: dict[int, list[nn.Parameter]] = {}
    for p in model.parameters():
        if id(p) not in placed:
            loose.setdefault(owner[id(p)], []).append(p)
    for g, params in loose.items():
        members[g].append(nn.ParameterList(params))
    return [LayerGroup(n, mods) for n, mods in zip(names, members)]


def lm_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """A language model's groups, encoder-decoder or decoder-only as its config says."""
    if getattr(model.config, "is_encoder_decoder", False):
        return encoder_decoder_groups(model)
    return decoder_layer_groups(model)
