# Spec §11: error taxonomy, failure recovery and graceful shutdown.
Feature: Errors and recovery
  Every failure has a stable code and the same body on every surface. Fatal
  failures stop the worker with a documented exit code so its supervisor can
  restart it; SIGTERM drains.

  @WORKER-4950 @WORKER-4951
  Scenario: HTTP errors carry code, message, retriable and retry_after_ms
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "single", "colour": "blue"}
      """
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the response JSON at "/retriable" is false

  @WORKER-4951
  Scenario: SSE error events carry the same body as HTTP errors
    Given a worker configured for the larger test model
    And the configuration sets "execution_timeout_ms" to 100
    When the worker is started
    And I execute "Once upon a time" with max_tokens 2000
    Then the stream ends with an "error" event with code "EXECUTION_TIMEOUT"
    And the error event has the fields "code", "message", "retriable", "retry_after_ms"
    And every event of the stream matches the schema the served API description gives its name

  @WORKER-4950 @source
  Scenario: The stable codes are declared once
    Then the file "src/error.rs" declares the codes "VRAM_OOM", "CUDA_ERROR", "MODEL_LOAD_FAILED", "SEAL_VERIFICATION_FAILED", "INVALID_PARAMS", "AUTH_FAILED", "INTERNAL", "HOST_OOM"

  @WORKER-4952 @source
  Scenario: VRAM and host memory exhaustion have different codes
    Then the file "src/error.rs" declares the codes "VRAM_OOM", "HOST_OOM"

  @WORKER-4961 @serial
  Scenario: A fatal error is reported through the status callback
    Given a worker serving the tiny test model
    When I inject the fault "flip_resident_byte" at offset 1
    And I execute "Hello" with max_tokens 2
    Then the readiness callback received a "stopped" status with error code "SEAL_VERIFICATION_FAILED"
    And the status callback has an "exit_code" of 5

  @WORKER-4961 @WORKER-4950
  Scenario: A start-up configuration failure is reported through the status callback as INVALID_CONFIG
    Given a worker configured for the tiny test model
    And the token file is readable by everyone
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the readiness callback received a "stopped" status with error code "INVALID_CONFIG"
    And the status callback has an "exit_code" of 2

  @WORKER-4962 @source
  Scenario: The shipped unit restarts with backoff and stops restart storms
    Then the file "deploy/worker-orcd@.service" mentions "Restart=on-failure"
    And the file "deploy/worker-orcd@.service" mentions "StartLimitBurst=5"
    And the file "deploy/worker-orcd@.service" mentions "StartLimitIntervalSec=300"
    And the file "deploy/worker-orcd@.service" mentions "RestartSteps="

  @WORKER-4963
  Scenario: A sixth start within five minutes trips the restart circuit breaker
    Given a worker configured for the tiny test model
    And the configuration sets "max_model_bytes" to 1024
    When the worker is started 5 times, each exiting with code 3 within 15 seconds
    Then the restart breaker's state file records 5 starts
    When the worker is started
    Then the worker exits with code 7 within 10 seconds
    And the last start's log narrates the restart circuit breaker tripping after 5 starts
    And the restart breaker's state file records 5 starts
    When the configuration sets "worker_id" to "another-worker"
    And the worker is started 1 time, each exiting with code 3 within 15 seconds

  @WORKER-4963
  Scenario: A clean exit resets the restart circuit breaker
    Given a worker configured for the tiny test model
    And the configuration sets "max_model_bytes" to 1024
    When the worker is started 4 times, each exiting with code 3 within 15 seconds
    And the configuration omits "max_model_bytes"
    And the worker is started
    Then the worker becomes ready
    When the worker receives SIGTERM
    Then the worker exits with code 0 within 20 seconds
    And the restart breaker's state file records 0 starts
    When the configuration sets "max_model_bytes" to 1024
    And the worker is started 5 times, each exiting with code 3 within 15 seconds
    And the worker is started
    Then the worker exits with code 7 within 10 seconds

  @WORKER-4963
  Scenario: Starts older than five minutes do not count towards the restart circuit breaker
    Given a worker configured for the tiny test model
    And the restart breaker's state file records 5 starts 310 seconds ago and 3 starts 240 seconds ago
    When the worker is started
    Then the worker becomes ready
    And the restart breaker's state file records 4 starts

  @WORKER-4963
  Scenario: Five starts just inside the five-minute window trip the restart circuit breaker
    Given a worker configured for the tiny test model
    And the restart breaker's state file records 5 starts 290 seconds ago
    When the worker is started
    Then the worker exits with code 7 within 10 seconds
    And the restart breaker's state file records 5 starts

  @WORKER-4963
  Scenario: A malformed restart breaker state file is reported and treated as empty
    Given a worker configured for the tiny test model
    And the restart breaker's state file holds "{not json"
    When the worker is started
    Then the worker becomes ready
    And a warning in the worker log names the restart breaker's state file
    And the restart breaker's state file records 1 start

  @WORKER-4970 @WORKER-4971 @serial
  Scenario: SIGTERM mid-stream lets the job finish, then the worker exits cleanly
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 300
    And the worker receives SIGTERM
    And I wait for the stream to finish
    Then the stream ends with an "end" event
    And the end event's tokens_out equals the number of token events
    And the worker exits with code 0 within 20 seconds

  @WORKER-4970 @serial
  Scenario: While draining, new work is refused with a retriable error
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 2000
    And the worker receives SIGTERM
    And I GET "/health" without a token
    Then the response status is 503
    And the response JSON at "/state" is "draining"
    When I execute "Hello" with max_tokens 2
    Then the response status is 503
    And the error code is "WORKER_UNAVAILABLE"
    And I cancel the job

  # The stream says the worker ended the job, not that the client did.
  @WORKER-4971 @serial
  Scenario: A job that outlives the drain timeout is cancelled and the exit is non-zero
    Given a worker configured for the larger test model
    And the configuration sets "drain_timeout_ms" to 1
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 2000
    And I wait until 1 token event has streamed
    And the worker receives SIGTERM
    Then the worker exits with code 6 within 20 seconds
    When I wait for the stream to finish
    Then the stream ends with an "error" event with code "CANCELLED"
    And the stream's error message mentions "the worker is shutting down"

  @WORKER-4972 @serial
  Scenario: Shutdown releases the model
    Given a worker serving the tiny test model
    When the worker receives SIGTERM
    Then the worker exits with code 0 within 20 seconds
    And the worker log mentions "released"

  @WORKER-4972 @gpu @serial
  Scenario: Shutdown gives all device memory back
    Given the free memory of GPU 0 is recorded
    And a worker serving the tiny test model
    When the worker receives SIGTERM
    Then the worker exits with code 0 within 20 seconds
    And the free memory of GPU 0 is back to the recorded value within 64 MiB
