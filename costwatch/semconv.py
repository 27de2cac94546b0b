"""OpenTelemetry GenAI semantic-convention names, defined once.

The constants in ``opentelemetry-semantic-conventions`` are marked deprecated
(moved to the GenAI conventions repo), so costwatch keeps its own; spans,
metrics, storage columns and rules import them from here.
"""

from __future__ import annotations

GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
# The response's service tier (OpenAI-specific GenAI conventions).
OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"

# Cost. No cost attribute is in the GenAI conventions yet; two candidates stand open, and
# costwatch emits both until one lands (issue 21):
# - `gen_ai.usage.cost.{amount,currency,source}`: open-telemetry/semantic-conventions-genai
#   PR #443 (implementing issue #287): amount as a double, ISO 4217 currency, source
#   `provider` (the value was in the response received) or `local` (computed by the recorder).
# - `operation.cost` + `operation.cost_units`: open-telemetry/semantic-conventions issue
#   #2312 (moved to semantic-conventions-genai #287), a generic per-operation cost.
GEN_AI_USAGE_COST_AMOUNT = "gen_ai.usage.cost.amount"
GEN_AI_USAGE_COST_CURRENCY = "gen_ai.usage.cost.currency"
GEN_AI_USAGE_COST_SOURCE = "gen_ai.usage.cost.source"
OPERATION_COST = "operation.cost"
OPERATION_COST_UNITS = "operation.cost_units"
COST_SOURCE_PROVIDER = "provider"
COST_CURRENCY_USD = "USD"

ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"

# Values of gen_ai.operation.name (GenAI conventions) for our operations.
OPERATION_CHAT = "chat"
OPERATION_EMBEDDINGS = "embeddings"
OPERATION_TEXT_COMPLETION = "text_completion"
