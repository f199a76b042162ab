Feature: Many jobs at once: slots, a bounded queue and batch-invariant streams
  The worker runs up to slots_total jobs together in shared engine steps
  (continuous batching), keeps up to max_queued_jobs more waiting in arrival
  order, and refuses the rest at once with a retriable 429. A job's tokens
  do not depend on which other jobs share its steps. Plan, the ready answer
  and the readiness callback say how much the worker can take now. With
  slots_total 1 and max_queued_jobs 0 it is the one-job worker of milestone
  M0, which the scenarios in ffi_safety.feature keep proving. (Issue 11
  points 4 and 5.)

  @WORKER-4710 @WORKER-4712 @WORKER-4982 @serial
  Scenario: Thirty-two jobs run together and each streams exactly what it streams alone
    Given a worker configured for the larger test model
    And the configuration sets "slots_total" to 8
    And the configuration sets "max_queued_jobs" to 32
    And the configuration sets "kv_cache_tokens" to 16384
    When the worker is started
    And 32 jobs of mixed prompts, seeds and sampling parameters arrive at staggered times
    Then every job ends with an "end" event
    And as many jobs ran at once as the worker has slots
    When each of those jobs runs again alone
    Then every job's stream is byte-identical to its solo run
    And the pairs of streams are in the proof bundle

  @WORKER-4420 @WORKER-4982 @serial
  Scenario: A job that finds every slot taken waits in the queue; a full queue refuses with a retry hint
    Given a worker configured for the larger test model
    And the configuration sets "slots_total" to 1
    And the configuration sets "max_queued_jobs" to 1
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 2000
    # Still running at the cancel below however fast the backend decodes
    # (2,000 tokens of this model took under 300 ms on an H100).
    And I make the next engine step hang for 600 ms
    And another job "Hello" with max_tokens 4 is accepted while the first runs
    Then that job's started event has queue_position 1
    And the ready answer's capacity is 1 slot with 0 free and 1 job waiting of at most 1
    And the metrics show 1 job running and 1 waiting
    When a second execute request arrives while the first is streaming
    Then the second request is refused with status 429 and code "WORKER_BUSY"
    And the second request's error is retriable with a retry_after_ms
    When 300 ms pass
    And I cancel the job
    Then the waiting job streams 4 tokens and ends with an "end" event
    And the waiting job's queue_time_ms covers its wait for the running job
    And the metrics show 0 jobs running and 0 waiting

  @WORKER-4970 @serial
  Scenario: On SIGTERM a waiting job is refused as retriable at once while the running job finishes
    Given a worker configured for the larger test model
    And the configuration sets "slots_total" to 1
    And the configuration sets "max_queued_jobs" to 1
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 300
    And another job "Hello" with max_tokens 4 is accepted while the first runs
    And the worker receives SIGTERM
    Then the waiting job's stream ends with a retriable "WORKER_UNAVAILABLE" error before the running job ends
    When I wait for the stream to finish
    Then the stream ends with an "end" event
    And the worker exits with code 0 within 20 seconds

  @WORKER-4210 @WORKER-4231 @WORKER-4982
  Scenario: Plan, the ready answer and the readiness callback report the worker's capacity
    Given a worker configured for the tiny test model
    And the configuration sets "slots_total" to 4
    And the configuration sets "max_queued_jobs" to 16
    And the configuration sets "max_context" to 256
    And the configuration sets "kv_cache_tokens" to 1000
    When the worker is started
    Then the readiness callback's capacity is the idle capacity for 4 slots, 16 queue places and a pool of 1000 positions
    And the ready answer's capacity is the idle capacity for 4 slots, 16 queue places and a pool of 1000 positions
    When I plan the tiny test model
    Then the plan's capacity is the idle capacity for 4 slots, 16 queue places and a pool of 1000 positions

  @WORKER-4121 @WORKER-4245 @WORKER-4122 @serial
  Scenario: A resident byte flipped while a job runs is caught at the next admission, and every job in flight ends with the seal error
    Given a worker serving the larger test model
    When I start executing "Once upon a time" with max_tokens 2000
    And I flip the resident byte at the first byte
    And another job "Hello" with max_tokens 4 is accepted while the first runs
    Then the waiting job's stream ends with an "error" event with code "SEAL_VERIFICATION_FAILED"
    When I wait for the stream to finish
    Then the stream ends with an "error" event with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds

  @WORKER-4420 @serial
  Scenario: A job that arrives while another runs starts at the next step, beside it
    Given a worker configured for the larger test model
    And the configuration sets "admission_window_ms" to 0
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 2000
    And another job "Hello" with max_tokens 16 is accepted while the first runs
    Then that job's started event has queue_position 0
    And the second job streams 16 tokens and ends with an "end" event
    And the running job was still running when the second job ended
    And I cancel the job

  @WORKER-4121 @WORKER-4245 @serial
  Scenario: Jobs that arrive together share one seal verification
    Given a worker configured for the larger test model
    And the configuration sets "admission_window_ms" to 100
    When the worker is started
    And I read the metrics
    And 4 jobs of mixed prompts, seeds and sampling parameters arrive together
    Then every job ends with an "end" event
    And the metric "worker_orcd_seal_verifications_total" increased by 1

  @WORKER-4420 @serial
  Scenario: A job whose KV pages do not fit beside the running job waits for them, then runs
    Given a worker configured for the larger test model
    And the configuration sets "max_context" to 256
    And the configuration sets "kv_cache_tokens" to 256
    When the worker is started
    # The hang holds the first job's first step, so the job is still running
    # when the second arrives however fast the backend decodes (200 tokens
    # of this model took 22 ms on an H100, over before a hang asked for
    # after its second token could land).
    And I make the next engine step hang for 1000 ms
    And I start executing "Once upon a time" with max_tokens 200
    And another job "Hello" with max_tokens 100 is accepted while the first runs
    Then the waiting job was accepted while the running job ran and streamed only after it ended
