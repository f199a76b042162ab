# Spec §5: memory safety, the CUDA FFI boundary, bounds and resource limits.
Feature: Memory safety, CUDA boundary and resource limits
  All device calls live in one module; everything else is safe Rust. Every
  size, index and queue is bounded.

  @WORKER-4400 @WORKER-4403 @source
  Scenario: Unsafe code is confined to the boundary and every block is justified
    Then only the files under "src/gpu" allow unsafe code
    And every unsafe block in "src" is preceded by a SAFETY comment

  @WORKER-4401 @WORKER-4402 @gpu
  Scenario: Device memory is freed exactly once, also when a job fails
    Given a worker serving the tiny test model
    When I read the metrics
    And I inject a device error
    And I execute "Hello" with max_tokens 4
    Then the stream ends with an "error" event with code "CUDA_ERROR"
    And the worker log never mentions "double free"

  @WORKER-4402 @source
  Scenario: Every CUDA status is checked and mapped to a stable code
    Then the source under "src/gpu" maps driver errors to "CUDA_ERROR"
    And the source under "src/gpu" maps allocation failures to "VRAM_OOM"

  @WORKER-4412 @WORKER-4224
  Scenario: A tensor whose data lies outside the file is refused
    Given a worker serving the tiny test model
    And a copy of the tiny model whose last tensor points past the end of the file
    When I plan that model
    Then the error code is "MODEL_LOAD_FAILED"
    And the error message mentions "offset"

  @WORKER-4413
  Scenario: Context positions beyond the KV cache are refused, not written
    Given a worker configured for the tiny test model
    And the configuration sets "max_context" to 16
    And the configuration sets "max_prompt_len" to 1000
    When the worker is started
    And I execute a prompt of exactly 10 tokens with max_tokens 64
    Then the 10 prompt tokens and the generated tokens fill the configured max_context exactly
    And a prompt of exactly 16 tokens is refused with INVALID_PARAMS naming max_context

  @WORKER-4420 @SCHEDULER-M0-001 @SCHEDULER-M0-003 @serial
  Scenario: A busy worker refuses a second job at once with a retry hint
    Given a worker configured for the larger test model
    And the configuration sets "slots_total" to 1
    And the configuration sets "max_queued_jobs" to 0
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 2000
    And a second execute request arrives while the first is streaming
    Then the second request is refused with status 429 and code "WORKER_BUSY"
    And the second request's error is retriable with a retry_after_ms
    And I cancel the job

  @WORKER-4421
  Scenario: A job that runs past the execution timeout is stopped
    Given a worker configured for the larger test model
    And the configuration sets "execution_timeout_ms" to 100
    When the worker is started
    And I execute "Once upon a time" with max_tokens 2000
    Then the stream ends with an "error" event with code "EXECUTION_TIMEOUT"

  # The CPU engine's pages hold 16 positions, so max_context 256 makes a pool
  # of 16 pages; the CUDA engine's hold 32, so 8 pages. A request asking for
  # more tokens than the context reserves every page.
  @WORKER-4422 @WORKER-4810
  Scenario: The metrics show the KV pages a running job reserved, and none once it ends
    Given a worker configured for the larger test model
    And the configuration sets "max_context" to 256
    When the worker is started
    Then the metrics show no KV cache page in use, of a pool for 256 positions
    When I start executing "Once upon a time" with max_tokens 2000
    And I wait until 1 token event has streamed
    Then the metrics show every KV cache page in use, of a pool for 256 positions
    When I cancel the job
    And I wait for the stream to finish
    Then the metrics show no KV cache page in use, of a pool for 256 positions

  @WORKER-4422 @WORKER-4423
  Scenario: The KV cache is planned at load from the configured context
    Given a worker configured for the tiny test model
    And the configuration sets "max_context" to 64
    And the configuration sets "max_prompt_len" to 1000
    When the worker is started
    Then the KV cache memory in the metrics is exactly what the configured max_context needs
    When I execute a prompt of exactly 40 tokens with max_tokens 1000
    Then the 40 prompt tokens and the generated tokens fill the configured max_context exactly
    When I execute a prompt of exactly 63 tokens with max_tokens 1000
    Then the 63 prompt tokens and the generated tokens fill the configured max_context exactly
    And a prompt of exactly 64 tokens is refused with INVALID_PARAMS naming max_context
