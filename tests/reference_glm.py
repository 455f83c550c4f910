"""The tests' independent reference of the official GLM forward (GLM-130B on SwissArmyTransformer
0.2.x, ChatGLM-6B's modeling_chatglm.py).

It lives in the package as `llmzoo.reference.glm130b` because `llmzoo verify` runs it from an
installed llmzoo; that module imports torch only and shares no code with llmzoo's builder, model,
attention, positions or loaders. This file names what the tests use from it.
"""

from llmzoo.reference.glm130b import (  # noqa: F401
    chatglm_masks_and_position_ids,
    glm130b_masks_and_position_ids,
    glm_forward,
    random_official_state,
    rotary_table,
)
