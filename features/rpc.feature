# Spec §3: the RPC protocol (Plan, Commit, Ready, Execute, Cancel) and its authentication.
Feature: Plan, Commit, Ready and Execute over HTTP with Server-Sent Events
  pool-managerd drives the worker through four authenticated calls and reads
  the generated text as a stream of events.

  @WORKER-4200 @WORKER-4203 @WORKER-4950
  Scenario: Calls without a token are refused
    Given a worker serving the tiny test model
    When I GET "/worker/ready" without a token
    Then the response status is 401
    And the error code is "AUTH_FAILED"

  @WORKER-4200 @WORKER-4203
  Scenario: Calls with a wrong token are refused on every protected endpoint
    Given a worker serving the tiny test model
    Then every protected endpoint answers 401 "AUTH_FAILED" to a wrong token

  @WORKER-4200
  Scenario: The API description needs the token like every other endpoint
    Given a worker serving the tiny test model
    When I GET "/openapi.json" without a token
    Then the response status is 401
    And the error code is "AUTH_FAILED"
    When I GET "/openapi.json"
    Then the response status is 200
    And the response JSON at "/openapi" is "3.1.0"

  @WORKER-4200 @WORKER-4812
  Scenario: Health and metrics answer without a token
    Given a worker serving the tiny test model
    When I GET "/health" without a token
    Then the response status is 200
    When I GET "/metrics" without a token
    Then the response status is 200

  @WORKER-4201 @serial
  Scenario: The time of a token check does not tell which of 64 tokens matched
    When I run the token-check timing benchmark with 64 tokens
    Then the early-exit control comparison leaks visibly (|t| above 10)
    And the worker's token check does not (|t| below 10, or a median gap under 0.25 of the control's)

  @WORKER-4202 @WORKER-4822
  Scenario: Authenticated requests are logged with the token fingerprint only
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the worker log mentions the token's fp6 fingerprint
    And no worker log line contains the token

  @WORKER-4210 @WORKER-4211 @WORKER-4212 @WORKER-4214
  Scenario: Plan says whether a model fits in the available memory
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "single"}
      """
    Then the response status is 200
    And the response JSON at "/feasible" is true
    And the response JSON at "/vram_required" is a positive integer
    And the response JSON at "/vram_available" is a positive integer
    And the response JSON at "/vram_required" is at most the value at "/vram_available"
    And the response JSON at "/shard_plan/0/vram_bytes" is a positive integer

  @WORKER-4214
  Scenario: Plan compares the model file's size with free memory before anything else
    Given a worker serving the tiny test model
    And a byte-identical copy of the served model named "copy.gguf" in the model root
    When the worker is told its free memory is the served model file's size minus one
    And I plan "copy.gguf"
    Then the response JSON at "/feasible" is false
    And the response JSON at "/vram_required" equals the served model file's size
    And the response JSON at "/reason" mentions "the model file alone"
    When the worker is told its free memory is the served model file's size
    And I plan "copy.gguf"
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "KV cache"

  @WORKER-4214
  Scenario: Plan is feasible when free memory equals what the model needs, and not one byte less
    Given a worker serving the tiny test model
    And a byte-identical copy of the served model named "copy.gguf" in the model root
    When I plan "copy.gguf"
    And the worker is told its free memory is the last plan's vram_required
    And I plan "copy.gguf"
    Then the response JSON at "/feasible" is true
    When the worker is told its free memory is the last plan's vram_required minus one
    And I plan "copy.gguf"
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "KV cache"

  @WORKER-4214
  Scenario: The served model's own memory counts as free when Plan asks about the served model itself
    Given a worker serving the tiny test model
    And a byte-identical copy of the served model named "copy.gguf" in the model root
    When the worker is told it has 0 bytes of free memory
    And I plan the tiny test model
    Then the response JSON at "/vram_available" equals the memory the worker reports in its metrics
    When I plan "copy.gguf"
    Then the response JSON at "/vram_available" is 0

  @WORKER-4211
  Scenario: Plan refuses tensor parallelism over more than one GPU, and treats a degree of 1 as one GPU
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "tensor_parallel", "tp_degree": 2}
      """
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "tensor-parallel"
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "tensor_parallel", "tp_degree": 1}
      """
    Then the response JSON at "/feasible" is true
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "single", "tp_degree": 2}
      """
    Then the response JSON at "/feasible" is true

  @WORKER-4211
  Scenario: Plan refuses an unknown shard layout naming the field
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "diagonal"}
      """
    Then the error code is "INVALID_PARAMS"
    And the error message mentions "shard_layout"

  @WORKER-4213 @WORKER-4621 @WORKER-4622
  Scenario: Plan refuses a model whose needs are outside the engine's profile, with the reason
    Given a worker serving the tiny test model
    And a tiny model whose architecture needs an unsupported positional encoding
    When I plan that model
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "positional"

  # Commit (WORKER-4220-4227): the start-up load of model_path is the first
  # commit; a later commit of the same bytes (by path, copy, hard link or
  # upload) under the served shard id returns that handle, under a new shard id
  # re-verifies the resident bytes and seals them afresh, retiring the old id.
  @WORKER-4220 @WORKER-4221 @WORKER-4226 @WORKER-4227 @WORKER-4113
  Scenario: Commit by path under a new shard id seals the served model afresh and retires the old id
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit the served model as shard "shard-a" with its file digest
    Then the commit sealed shard "shard-a" afresh over the served model and the worker lists exactly that handle
    And the worker log shows the resident digest verified before the seal of shard "shard-a"
    And a job naming handle "shard-a" streams to its end
    And a job naming the remembered handle is refused with HTTP 410 and "HANDLE_SUPERSEDED", naming shard "shard-a"

  @WORKER-4220 @WORKER-4221 @WORKER-4226
  Scenario: Commit by path under the served shard id returns the sealed handle unchanged
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I POST to "/worker/commit" with body:
      """
      {"model_ref": "{tiny_model}", "shard_id": "{handle_id}", "shard_index": 0, "expected_digest": "{tiny_file_digest}"}
      """
    Then the response status is 200
    And the response JSON at "/handle" is the remembered shard handle

  @WORKER-4022 @WORKER-4220 @WORKER-4223
  Scenario: A byte-identical copy or a hard link of the served model under another name is the same model
    Given a worker serving the tiny test model
    And a byte-identical copy of the served model named "copy.gguf" in the model root
    And a hard link to the served model named "link.gguf" in the model root
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit "copy.gguf" as shard "copy-1" with its file digest
    Then the commit sealed shard "copy-1" afresh over the served model and the worker lists exactly that handle
    When I commit "link.gguf" as shard "link-1" with its file digest
    Then the commit sealed shard "link-1" afresh over the served model and the worker lists exactly that handle
    And a job naming handle "link-1" streams to its end

  @WORKER-4223 @WORKER-4314
  Scenario: Commit of the served model with a wrong expected digest is refused and changes nothing
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit the served model as shard "shard-b" with a wrong digest
    Then the response status is 422
    And the error code is "MODEL_LOAD_FAILED"
    And the error message mentions "expected_digest"
    And the worker still serves the remembered shard handle
    And no worker log event "sealed" names shard "shard-b"

  @WORKER-4113 @WORKER-4122 @serial
  Scenario: A commit under a new shard id re-verifies the resident bytes and never seals altered ones
    Given a worker serving the tiny test model
    When I inject the fault "flip_resident_byte" at offset 100
    And I commit the served model as shard "after-flip" with its file digest
    Then the response status is 500
    And the error code is "SEAL_VERIFICATION_FAILED"
    And no worker log event "sealed" names shard "after-flip"
    And the worker exits with code 5 within 15 seconds

  @WORKER-4220 @WORKER-4221 @WORKER-4226 @WORKER-4227 @WORKER-4113
  Scenario: Commit by upload under a new shard id seals the served model afresh and retires the old id
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I upload the served model as shard "upload-a" for commit with its digest
    Then the commit sealed shard "upload-a" afresh over the served model and the worker lists exactly that handle
    And the worker log shows the resident digest verified before the seal of shard "upload-a"
    And a job naming handle "upload-a" streams to its end
    And a job naming the remembered handle is refused with HTTP 410 and "HANDLE_SUPERSEDED", naming shard "upload-a"

  @WORKER-4220 @WORKER-4221 @WORKER-4223 @WORKER-4226
  Scenario: Commit by upload of the served model's bytes returns its sealed handle and the worker serves
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I upload the served model for commit with its digest
    Then the response status is 200
    And the response JSON at "/handle/sealed" is true
    And the response JSON at "/handle" is the remembered shard handle
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4223 @WORKER-4314 @WORKER-4305
  Scenario: An upload whose bytes do not match the expected digest is refused and changes nothing
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I upload the served model for commit with a wrong digest
    Then the response status is 422
    And the error code is "MODEL_LOAD_FAILED"
    And the error message mentions "expected_digest"
    And the worker still serves the remembered shard handle
    When I upload the served model for commit with no digest
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "expected_digest"
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4225 @WORKER-4301 @WORKER-4305
  Scenario: An upload above max_model_bytes is refused before it is used and changes nothing
    Given a worker configured for the tiny test model
    And max_model_bytes is the size of the served model
    When the worker is started
    And I GET "/worker/ready"
    And I remember the shard handle
    And I upload the served model plus one byte for commit with its digest
    Then the response status is 413
    And the error code is "PAYLOAD_TOO_LARGE"
    And the error message mentions "max_model_bytes"
    When I upload the served model plus one byte as a stream for commit with its digest
    Then the response status is 413
    And the error code is "PAYLOAD_TOO_LARGE"
    And the worker still serves the remembered shard handle
    When I upload the served model as a stream for commit with its digest
    Then the response status is 200
    And the response JSON at "/handle" is the remembered shard handle
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4022 @WORKER-4305
  Scenario: An upload of a different model is refused as a conflict and changes nothing
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I remember the shard handle
    And I upload the second tiny model for commit with its digest
    Then the response status is 409
    And the error code is "MODEL_CONFLICT"
    And the worker still serves the remembered shard handle

  @WORKER-4222 @WORKER-4313
  Scenario: A signed commit to a worker without a trusted key is rejected, never accepted unverified
    Given a worker serving the tiny test model
    And a second tiny model in the model root
    When I commit the second tiny model with a bad Ed25519 signature
    Then the response status is 422
    And the error code is "MODEL_SIGNATURE_INVALID"
    And the error message mentions "cannot be verified"
    And the worker process is still running

  @WORKER-4224 @WORKER-4310 @WORKER-4312
  Scenario: A truncated GGUF file is refused before anything is allocated
    Given a worker serving the tiny test model
    And a truncated copy of the tiny model in the model root
    When I plan that model
    Then the error code is "MODEL_LOAD_FAILED"
    And the worker process is still running

  @WORKER-4225
  Scenario: A model larger than the size limit is refused before it is read
    Given a worker configured for the tiny test model
    And the configuration sets "max_model_bytes" to 1024
    When the worker is started
    Then the worker exits with code 3 within 15 seconds
    And the worker log mentions "max_model_bytes"

  @WORKER-4230 @WORKER-4231
  Scenario: Ready attests readiness with the sealed shards
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response status is 200
    And the response JSON at "/ready" is true
    And the response JSON at "/handles" is an array of 1
    And the response JSON at "/nccl_group_id" is null

  @WORKER-4233
  Scenario: Ready may be served without a token when configured so
    Given a worker configured for the tiny test model
    And the configuration sets "ready_requires_auth" to false
    When the worker is started
    And I GET "/worker/ready" without a token
    Then the response status is 200
    And the response JSON at "/ready" is true

  @WORKER-4240 @WORKER-4241 @WORKER-4246 @WORKER-4247 @WORKER-4248 @WORKER-4253
  Scenario: Execute streams started, tokens, metrics and end
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 8
    Then the stream answered with status 200 and content type "text/event-stream"
    And the event names are all among "started", "token", "metrics", "end", "error"
    And the stream starts with a "started" event
    And the started event has the fields "job_id", "queue_position", "predicted_start_ms"
    And the token events have data with exactly the fields "t" and "i"
    And the token events are numbered from 0 without gaps
    And the stream ends with an "end" event
    And the end event has the fields "tokens_out", "decode_time_ms", "finish_reason"
    And the end event's tokens_out equals the number of token events
    And nothing follows the final event and the stream is closed
    And every event of the stream matches the schema the served API description gives its name

  @WORKER-4246 @WORKER-4245 @smollm2
  Scenario: The started event predicts the start from the measured seal check
    Given a worker serving the SmolLM2 model
    When I execute "Hello" with max_tokens 1
    Then the started event has queue_position 0
    And the started event's predicted_start_ms is positive
    When I read the metrics
    And I execute "Hello" with max_tokens 1
    Then the started event's predicted_start_ms equals the seal check in the metrics read before

  @WORKER-4241
  Scenario: The job id is returned as a header and in the started event
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 2
    Then the header "X-Job-Id" equals the started event's job_id

  @WORKER-4241 @WORKER-4248
  Scenario: A stop sequence ends generation with finish reason stop
    Given a worker serving the tiny test model
    When I execute with params:
      """
      {"prompt": "Hello", "params": {"max_tokens": 32, "temperature": 0, "seed": 1, "stop": ["{first_token_text}"]}}
      """
    Then the end event's finish_reason is "stop"

  @WORKER-4241 @WORKER-4248
  Scenario: Reaching max_tokens ends generation with finish reason length
    Given a worker serving the larger test model
    When I execute "Once upon a time" with max_tokens 3
    Then the end event's finish_reason is "length"
    And the stream has exactly 3 token events
    And the end event's tokens_out equals the number of token events

  @WORKER-4250
  Scenario: Streaming requires the bearer token
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" without a token with body:
      """
      {"handle_id": "{handle_id}", "prompt": "Hello", "params": {"max_tokens": 2}}
      """
    Then the response status is 401
    And the error code is "AUTH_FAILED"

  @WORKER-4251
  Scenario: Another identity cannot cancel someone else's job
    Given a worker whose token file holds two tokens
    When I start executing "Once upon a time" with max_tokens 2000
    And I cancel the job with the second token
    Then the response status is 403
    And the error code is "FORBIDDEN"
    # The refused cancel left the job running: its owner can still cancel it.
    When I cancel the job
    Then the response status is 200
    And the response JSON at "/cancelled" is true
    And I wait for the stream to finish
    And the stream ends with an "error" event with code "CANCELLED"

  @WORKER-4252 @SCHEDULER-M0-004
  Scenario: No token follows an acknowledged cancel and the slot is freed
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 2000
    And I cancel the job after 5 token events have streamed
    Then the response status is 200
    And the response JSON at "/cancelled" is true
    And no token event follows the cancel acknowledgement
    And the stream ends with an "error" event with code "CANCELLED"
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4252
  Scenario: Cancelling an unknown job says so
    Given a worker serving the tiny test model
    When I POST to "/worker/cancel" with body:
      """
      {"job_id": "job-that-never-was"}
      """
    Then the response status is 404
    And the error code is "NOT_FOUND"

  @WORKER-4252 @SCHEDULER-M0-004
  Scenario: A client that disconnects cancels its job and frees the slot
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 2000
    And I disconnect the stream
    Then within 5 seconds a new execute of "Hello" with max_tokens 2 succeeds
