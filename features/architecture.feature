# Spec §0 and §1: goals, architecture and process model.
Feature: Architecture and process model
  worker-orcd is one process per GPU that loads one model, seals it, serves it
  and is supervised by pool-managerd. These scenarios show the shape of the
  process from the outside and the boundaries of the code from the inside.

  @WORKER-4030
  Scenario: A freshly started worker answers its health check
    Given a worker serving the tiny test model
    When I GET "/health" without a token
    Then the response status is 200
    And the response JSON at "/state" is "ready"

  @WORKER-4030 @WORKER-4031 @WORKER-4227 @WORKER-4113
  Scenario: The worker walks through its lifecycle states and is Ready only after its start-up commit is verified and sealed
    Given a worker serving the tiny test model
    Then the worker's lifecycle states so far are "starting", "loading", "ready"
    And the worker log shows, in order, the start-up commit, its verified digest, its seal and the state "ready"

  @WORKER-4031 @WORKER-4113 @WORKER-4227
  Scenario: A start-up load whose resident bytes differ from the file is never sealed and the worker never turns Ready
    Given a worker configured for the tiny test model
    And the start-up load will flip resident byte 100
    When the worker is started
    Then the worker exits with code 5 within 30 seconds
    And the worker log has no "digest_verified" event
    And the worker log has no "sealed" event
    And the worker's lifecycle states never include "ready"

  @WORKER-4030 @SCHEDULER-M0-005
  Scenario: While a job runs the health check says executing
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 2000
    And I GET "/health" without a token
    Then the response JSON at "/state" is "executing"
    When I cancel the job
    And I wait for the stream to finish

  @WORKER-4001 @WORKER-4112
  Scenario: A job runs only against a sealed shard handle
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles/0/sealed" is true
    When I execute "Hello" with max_tokens 4
    Then the stream ends with an "end" event

  @WORKER-4001
  Scenario: A job naming an unknown handle is refused
    Given a worker serving the tiny test model
    When I POST to "/worker/execute" with body:
      """
      {"handle_id": "no-such-shard", "prompt": "Hello", "params": {"max_tokens": 4}}
      """
    Then the response status is 404
    And the error code is "NOT_FOUND"

  @WORKER-4003 @WORKER-4620
  Scenario: A model is admitted only when its MCD fits the ECP
    Given a worker serving the tiny test model
    When I plan the tiny test model
    Then the response status is 200
    And the response JSON at "/feasible" is true
    And the response JSON at "/mcd/quant" is a non-empty array

  @WORKER-4010 @WORKER-4400 @source
  Scenario: One binary with a single CUDA boundary module
    Then only the files under "src/gpu" allow unsafe code
    And the crate root denies unsafe code

  @WORKER-4011 @source
  Scenario: HTTP, lifecycle, residency, telemetry and scheduling are Rust modules
    Then the file "src/http/mod.rs" mentions "axum"
    And the file "src/daemon/mod.rs" mentions "//!"
    And the file "src/shard/mod.rs" mentions "//!"
    And the file "src/telemetry/mod.rs" mentions "//!"
    And the file "src/daemon/engine_thread.rs" mentions "//!"

  @WORKER-4012 @source
  Scenario: Compute kernels are CUDA sources, one operation per file
    Then the folder "cuda" holds the kernel sources "rmsnorm", "rope", "attention", "topk"
    And the folder "cuda" holds the shared header "common.cuh"

  @WORKER-4013 @WORKER-4401 @source
  Scenario: Device memory is owned by Rust values through cudarc
    Then the file "Cargo.toml" mentions "cudarc"
    And the source under "src" never calls "cuMemFree" outside "src/gpu"

  @WORKER-4020 @WORKER-4703
  Scenario: One worker process serves exactly one GPU
    Given a worker serving the tiny test model
    When I plan the tiny test model
    Then the response JSON at "/shard_plan" is an array of 1
    And the response JSON at "/shard_plan/0/gpu_device" is 0

  @WORKER-4021
  Scenario: The worker stays the process its supervisor started, with no children, through start-up and a job
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then the stream ends with an "end" event
    And the worker process is still the one the harness started, in the harness's session, with no child processes

  @WORKER-4021 @source
  Scenario: The worker never spawns or daemonizes itself
    Then the source under "src" never calls "fork("
    And the source under "src" never calls "daemon("
    And the source under "src" never calls "Command::new"

  @WORKER-4022
  Scenario: A second, different model is refused
    Given a worker serving the tiny test model
    And a second tiny model in the model root
    When I commit the second tiny model as shard "other-shard"
    Then the response status is 409
    And the error code is "MODEL_CONFLICT"

  @WORKER-4022
  Scenario: Committing the same model again is idempotent
    Given a worker serving the tiny test model
    When I commit the tiny test model as shard "tiny-again"
    Then the response status is 200
    And the response JSON at "/handle/sealed" is true
    And the response JSON at "/handle/digest" is the tiny model's digest

  @WORKER-4023 @WORKER-4612
  Scenario: After loading, the worker announces its readiness to its supervisor
    Given a worker serving the tiny test model
    Then the readiness callback received a "ready" announcement
    And the announcement JSON at "/ecp/worker_id" is the configured worker id
    And the announcement JSON at "/handles/0/sealed" is true
    And the announcement JSON at "/fp6" is a non-empty array

  # The engine's device-error path is backend-independent: the cpu engine's
  # test hook fails the next forward pass exactly as a CUDA error would.
  @WORKER-4032 @WORKER-4960 @WORKER-4961 @serial
  Scenario: A device error stops the worker with its own exit code and tells the supervisor
    Given a worker serving the tiny test model
    When I inject a device error
    And I execute "Hello" with max_tokens 4
    Then the stream ends with an "error" event with code "CUDA_ERROR"
    And the worker exits with code 4 within 15 seconds
    And the readiness callback received a "stopped" status with error code "CUDA_ERROR"

  # The step watchdog (issue 12): a step that never returns, as a hung
  # kernel would, is noticed within step_timeout_ms; the engine thread is
  # stuck, so the watchdog ends the jobs and stops the worker itself.
  @WORKER-4032 @WORKER-4960 @WORKER-4961 @serial
  Scenario: An engine step that hangs past step_timeout_ms fails the job with ENGINE_HUNG and stops the worker
    Given a worker configured for the tiny test model
    And the configuration sets "step_timeout_ms" to 1000
    When the worker is started
    And I make the next engine step hang for 60000 ms
    And I execute "Hello" with max_tokens 4
    Then the stream ends with an "error" event with code "ENGINE_HUNG"
    When I GET "/health" without a token
    Then the response status is 503
    And the worker exits with code 4 within 15 seconds
    And the readiness callback received a "stopped" status with error code "ENGINE_HUNG"

  # A job still waiting for a slot when the step hangs is ended the same
  # way: the watchdog fails every accepted job, queued ones included.
  @WORKER-4032 @WORKER-4960 @serial
  Scenario: A job waiting behind a hung engine step also ends with ENGINE_HUNG
    Given a worker configured for the tiny test model
    And the configuration sets "step_timeout_ms" to 2000
    And the configuration sets "slots_total" to 1
    And the configuration sets "max_queued_jobs" to 1
    When the worker is started
    And I make the next engine step hang for 60000 ms
    And I start executing "Hello" with max_tokens 4
    And another job "Hi" with max_tokens 4 is accepted while the first runs
    Then the waiting job's stream ends with an "error" event with code "ENGINE_HUNG"
    When I wait for the stream to finish
    Then the stream ends with an "error" event with code "ENGINE_HUNG"
    And the worker exits with code 4 within 15 seconds

  @KERNEL-SAFE-004 @gpu @serial
  Scenario: A device error injected on the GPU fails the job with CUDA_ERROR and stops the worker
    Given a worker serving the tiny test model
    When I inject a device error
    And I execute "Hello" with max_tokens 4
    Then the stream ends with an "error" event with code "CUDA_ERROR"
    And the worker exits with code 4 within 15 seconds

  @WORKER-4000 @WORKER-4100 @gpu
  Scenario: Decode runs from device memory only
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles/0/backend" is "cuda"
    And the metrics have a positive "worker_orcd_memory_bytes" sample labelled "cuda"
    When I execute "Hello" with max_tokens 8
    Then the stream ends with an "end" event

  @WORKER-4002 @gpu @post-m0
  Scenario: Two GPUs run one model together over NCCL
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When I execute "Hello" with max_tokens 8
    Then the stream ends with an "end" event
