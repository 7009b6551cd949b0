"""The agents' tools: image search, image editing, and the checks every image passes on the way in.

`quality` holds the download gate and perceptual hashing; `search` finds images on the web or in the
indexed pool; `edit` changes them, either with recorded deterministic operations or through an
OpenAI-compatible image model; `constraints` says, per capability type, which changes are allowed.
Stages build the tools from the spec with `open_search` and `open_editor`.
"""
