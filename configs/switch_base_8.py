"""Switch-Base-8 (Fedus et al. 2022, "Switch Transformers", JMLR, Section 2 and Table 9 for
the Base architecture; the released google/switch-base-8 config.json): T5-Base v1.0
(configs/t5_base.py: 12 + 12 layers, d_model 768, 12 heads of 64, ReLU MLPs of 3072, vocab
32,128, one tied embedding) with every other MLP of the encoder and of the decoder (the second
of each pair: encoder/decoder_sparse_step 2, 6 + 6 sparse layers) a Switch layer of 8 experts
of width 3072 and top-1 routing (weight: the router probability of the chosen expert).
Family `switch` (T5's network) so that `python -m fmjax.convert import --family=switch
--hf_dir=switch-base-8` reads the release and export writes one transformers loads.

Command:  python -m fmjax.train --config=configs/switch_base_8.py --workdir=gs://BUCKET/switch \
              --config.data.source=c4/en --config.tokenizer.path=t5_spiece.model \
              --config.mesh.expert=8
Budget:   the paper: 550k steps x 2^20 tokens (Section 2.4: batches of 1M tokens);
          as here, 1,000,000 steps x 2,048 x 512 as configs/t5_base.py.
Slice:    v5p-64, with this command (python -m fmjax.preflight --fast: peak 46.6 of 95.7 GiB per
          chip, mesh data 4 x expert 8, the experts in megablox; 45.4 with
          --config.model.moe.grouped_matmul=ragged_dot). Without mesh.expert (all 8 experts on
          every chip) megablox peaks at 48.5 GiB, while XLA's ragged_dot lowering fails the
          compile (libtpu 0.0.42: CompileTimeScopedVmemOom).
Expected: python -m fmjax.info reports 619,339,008 parameters (T5-Base's 222,903,552 + 12
          sparse layers x (7 more experts x 2 x 768 x 3072 + a 768 x 8 router)), 222,977,280
          active per token; the paper's negative log perplexity -1.534 after 100k steps at
          capacity factor 1.25 (Table 1, Switch-Base 128 experts; 8 experts: Figure 4).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_base")
    c.model.family = "switch"  # T5's network; HF SwitchTransformers interop (fmjax/hf/switch.py)
    c.model.moe.num_experts = 8  # config.json num_experts
    c.model.moe.top_k = 1  # Switch routing (num_selected_experts)
    c.model.moe.interval = 2  # encoder_sparse_step = decoder_sparse_step = 2
    c.model.moe.renormalize = False  # the chosen expert's probability scales its output
    c.model.moe.capacity_factor = 1.25  # Table 1 (the release uses a fixed expert_capacity 64)
    c.model.moe.load_balance_loss = 0.01  # alpha = 10^-2 (Section 2.2)
    c.model.moe.router_z_loss = 0.001  # config.json router_z_loss_coef
    return c
