"""Hugging Face interop: `python -m fmjax.convert import|export` (fmjax/convert.py).

  mapping.py         what a family converter declares (Converter, Link, Stack, Fresh) and its
                     resolution against a param tree; the converter registry
  NAME.py            one per family (gpt2.py, llama.py, mixtral.py, bert.py, t5.py, t5_1_1.py,
                     switch.py): config fields and tensor links only
  conversion.py      import_hf / export_hf
  safetensors_io.py  HF directories read and written one tensor at a time
  params_io.py       fmjax params-only checkpoints written and read one leaf (block) at a time

A new family is one module here that calls `mapping.register(Converter(...))`; it is found by
name (`mapping.get("bert")` imports fmjax/hf/bert.py), so no central list changes.
"""
