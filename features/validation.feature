# Spec §4: input validation and model security.
Feature: Input validation and model security
  Every request and every model file is treated as hostile until checked.
  A refused request changes nothing.

  @WORKER-4300
  Scenario: An unknown field is refused and named
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}, "priority": 9}
      """
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "priority"

  @WORKER-4300
  Scenario: A field of the wrong type is refused and named
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": 42, "shard_layout": "single"}
      """
    Then the error code is "INVALID_PARAMS"
    And the error message mentions "model_ref"

  # Which of two values counts would depend on the parser; the worker
  # refuses the request instead of silently taking one.
  @WORKER-4300
  Scenario: A key given twice in one object is refused and named
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2, "max_tokens": 3}}
      """
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "max_tokens"
    And the error message mentions "twice"

  # A body sent as a form or as text is a client bug; taking it as JSON
  # anyway would hide the bug. Nothing runs, and the worker stays sealed.
  @WORKER-4300
  Scenario: A JSON endpoint refuses a text body with 415
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with content type "text/plain" and body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}}
      """
    Then the response status is 415
    And the error code is "UNSUPPORTED_MEDIA_TYPE"
    And the error message mentions "text/plain"
    And the error message mentions "Content-Type: application/json"
    And the ready answer still shows the sealed shard

  @WORKER-4300
  Scenario: A JSON endpoint refuses a form body with 415 (curl -d without a type)
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with content type "application/x-www-form-urlencoded" and body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}}
      """
    Then the response status is 415
    And the error code is "UNSUPPORTED_MEDIA_TYPE"
    And the error message mentions "application/x-www-form-urlencoded"
    And the error message mentions "Content-Type: application/json"
    And the ready answer still shows the sealed shard

  @WORKER-4300
  Scenario: A JSON endpoint refuses a body without a content type with 415
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" without a content type and body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}}
      """
    Then the response status is 415
    And the error code is "UNSUPPORTED_MEDIA_TYPE"
    And the error message mentions "no Content-Type"
    And the error message mentions "Content-Type: application/json"
    And the ready answer still shows the sealed shard

  @WORKER-4300
  Scenario: A JSON body with a charset parameter is accepted
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with content type "application/json; charset=utf-8" and body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}}
      """
    Then the response status is 200

  @WORKER-4301 @WORKER-4423
  Scenario: An oversized request body is refused with 413 before parsing
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" a body of 3000000 bytes
    Then the response status is 413

  @WORKER-4302
  Scenario: Out-of-range sampling parameters are refused, naming the parameter
    Given a worker serving the tiny test model
    Then each of these execute params is refused with INVALID_PARAMS naming the field:
      | params                               | field       |
      | {"max_tokens": 4, "temperature": 2.5} | temperature |
      | {"max_tokens": 4, "temperature": -1}  | temperature |
      | {"max_tokens": 4, "top_p": 0}         | top_p       |
      | {"max_tokens": 4, "top_p": 1.5}       | top_p       |
      | {"max_tokens": 4, "top_k": -1}        | top_k       |
      | {"max_tokens": 0}                     | max_tokens  |

  # JSON Schema's "integer" includes 2.0: such a number is the integer it
  # names (below 2^53); a fraction is still refused.
  @WORKER-4302
  Scenario: Integers written with a decimal point are integers; fractions are refused
    Given a worker serving the larger test model
    When I execute with params:
      """
      {"prompt": "Once upon a time", "params": {"max_tokens": 3.0, "seed": 7.0, "temperature": 0}}
      """
    Then the end event's finish_reason is "length"
    And the stream has exactly 3 token events
    And each of these execute params is refused with INVALID_PARAMS naming the field:
      | params                          | field      |
      | {"max_tokens": 2.5}             | max_tokens |
      | {"max_tokens": 4, "seed": 1.5}  | seed       |
      | {"max_tokens": 4, "top_k": 0.5} | top_k      |

  @WORKER-4243 @WORKER-4242
  Scenario: The generate command refuses what Execute refuses, naming the same field
    Given a worker serving the tiny test model
    Then generate and Execute both refuse each of these, naming the same field:
      | prompt  | generate flags          | params                                | field       |
      | "Hello" | --max-tokens 0          | {"max_tokens": 0}                     | max_tokens  |
      | "Hello" | --max-tokens 5000       | {"max_tokens": 5000}                  | max_tokens  |
      | "Hello" | --temperature 2.5       | {"temperature": 2.5}                  | temperature |
      | "Hello" | --top-p 0               | {"top_p": 0}                          | top_p       |
      | "Hello" | --top-k 2000000         | {"top_k": 2000000}                    | top_k       |
      | ""      | --chat                  | {}                                    | prompt      |

  @WORKER-4243
  Scenario: max_tokens above the configured limit is refused
    Given a worker serving the tiny test model
    When I execute with params:
      """
      {"prompt": "Hello", "params": {"max_tokens": 5000}}
      """
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "max_tokens"

  @WORKER-4242 @WORKER-4423
  Scenario: A prompt above the configured length limit is refused
    Given a worker configured for the tiny test model
    And the configuration sets "max_prompt_len" to 100
    When the worker is started
    And I execute a prompt of 101 characters
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "prompt"

  @WORKER-4242
  Scenario: The prompt limit counts characters and a prompt of exactly the limit is accepted
    Given a worker configured for the tiny test model
    And the configuration sets "max_prompt_len" to 100
    When the worker is started
    And I execute a prompt of 100 two-byte characters
    Then the stream ends with an "end" event
    When I execute a prompt of 101 two-byte characters
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "101 characters"

  @WORKER-4423 @WORKER-4242
  Scenario: A prompt within the character limit whose tokens do not fit the context is refused
    Given a worker configured for the tiny test model
    And the configuration sets "max_context" to 16
    And the configuration sets "max_prompt_len" to 1000
    When the worker is started
    And I execute a prompt of 300 characters
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "max_context"

  @WORKER-4244 @WORKER-4304
  Scenario: A prompt containing a NUL byte is refused
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hel\u0000lo", "params": {"max_tokens": 2}}
      """
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "NUL"

  @WORKER-4304
  Scenario: A body that is not valid UTF-8 is refused
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" a body with invalid UTF-8 in the prompt
    Then the response status is 400
    And the error code is "INVALID_PARAMS"

  @WORKER-4303
  Scenario: Identifiers outside the safe alphabet or too long are refused
    Given a worker serving the tiny test model
    Then each of these commit shard ids is refused with INVALID_PARAMS naming "shard_id":
      | shard_id                        |
      | ../escape                       |
      | has space                       |
      | semi;colon                      |
      | a-very-long-id-of-more-than-one-hundred-and-twenty-eight-characters-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx |

  @WORKER-4305 @serial
  Scenario: A burst of bad requests changes nothing
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    And I remember the tokens of that stream
    And I read the metrics
    And I send 20 malformed requests to every endpoint
    Then the response JSON of "/worker/ready" at "/handles/0/seal" is unchanged
    And the metric "worker_orcd_jobs_started_total" is unchanged
    And the metric "worker_orcd_jobs_completed_total" is unchanged
    When I execute "Hello" with max_tokens 4
    Then the token stream equals the remembered one

  @WORKER-4311 @WORKER-4224
  Scenario: A model over the configured tensor-count limit is refused
    Given a worker configured for the tiny test model
    And the configuration sets "gguf_limits" to {"max_tensors": 3}
    When the worker is started
    Then the worker exits with code 3 within 15 seconds
    And the worker log mentions "tensor"

  @WORKER-4312
  Scenario: Malformed model files give errors, never crashes
    Given a worker serving the tiny test model
    Then each malformed copy of the tiny model is refused by plan with "MODEL_LOAD_FAILED" and the worker keeps running:
      | corruption               |
      | truncated header         |
      | huge tensor count        |
      | tensor offset past end   |
      | string length past end   |

  # A NaN or infinite weight would load and answer with garbage; a sampled
  # check at load refuses it (every small tensor whole, large ones at spread
  # blocks), naming the tensor.
  @WORKER-4312
  Scenario: A model whose weights hold NaN or infinity is refused at load, naming the tensor
    Given a worker serving the tiny test model
    Then each malformed copy of the tiny model is refused by plan with "MODEL_LOAD_FAILED" and the worker keeps running:
      | corruption                | reason             |
      | NaN in output_norm.weight | output_norm.weight |
      | Inf in output_norm.weight | not a number       |

  # No tokens, nothing to generate: a capability no engine has, refused the
  # same way by Plan, Commit, start-up and `generate` (they share the check).
  @WORKER-4603
  Scenario: A model declaring a vocabulary of 0 tokens is a capability mismatch
    Given a worker serving the tiny test model
    Then each malformed copy of the tiny model is refused by plan with "CAPABILITY_MISMATCH" and the worker keeps running:
      | corruption   | reason         |
      | vocab_size 0 | vocab_size = 0 |

  @WORKER-4410
  Scenario: A tensor whose shape does not fit the architecture is refused before anything is launched
    Given a worker serving the tiny test model
    Then each malformed copy of the tiny model is refused by plan with "MODEL_LOAD_FAILED" and the worker keeps running:
      | corruption               | reason |
      | first tensor reshaped    | shape  |

  @WORKER-4411
  Scenario: Tensor sizes whose arithmetic overflows are refused, never wrapped
    Given a worker serving the tiny test model
    Then each malformed copy of the tiny model is refused by plan with "MODEL_LOAD_FAILED" and the worker keeps running:
      | corruption                 | reason   |
      | first tensor dims overflow | overflow |

  @WORKER-4320 @WORKER-4322 @WORKER-4323
  Scenario: A model path outside the model root is refused naming the root
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "../../../../etc/passwd", "shard_layout": "single"}
      """
    Then the request is refused with a client error naming the model root

  @WORKER-4321 @WORKER-4322
  Scenario: A symlink inside the root that points outside it is refused
    Given a worker serving the tiny test model
    And a symlink in the model root that points to a model outside it
    When I plan that model
    Then the request is refused with a client error naming the model root

  @WORKER-4310 @WORKER-4314
  Scenario: The file digest is computed and logged before parsing
    Given a worker serving the tiny test model
    Then the worker log mentions the tiny model's file digest
