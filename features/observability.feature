# Spec §9: structured logs, narration, metrics.
Feature: Observability
  Operators read JSON logs with a plain-language narration, follow a request
  by its correlation id, and scrape Prometheus metrics without a token.

  @WORKER-4800
  Scenario: Job logs are JSON with the job's fields and a human narration
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then every worker log line is a JSON object
    And a worker log line has the fields "job_id", "worker_id", "gpu_device", "model_ref", "tokens_in", "tokens_out", "decode_time_ms"
    And every worker log line with a "job_id" also has a "human" field

  # The suite runs a test-hooks build (it needs /debug/fault); such a build
  # must never pass for the product, so it says what it is first thing.
  @WORKER-4800
  Scenario: A test build warns at start-up that it is one
    Given a worker serving the tiny test model
    Then the worker log mentions "TEST BUILD"
    And the worker log mentions "Never run it in production"

  @WORKER-4803
  Scenario: Every log line of a worker's life, from start to shutdown, carries a human narration
    Given a worker serving the larger test model
    When I GET "/worker/ready" without a token
    And I POST to "/worker/plan" with body:
      """
      {"model_ref": "no-such-model.gguf", "shard_layout": "single"}
      """
    And I execute "Hello" with max_tokens 2
    And I start executing "Once upon a time" with max_tokens 2000
    And I cancel the job
    And I wait for the stream to finish
    And the worker receives SIGTERM
    Then the worker exits with code 0 within 20 seconds
    And the worker log has lines at level "debug", "info", "warn"
    And every worker log line is a JSON object with a non-empty human field

  @WORKER-4801
  Scenario: A correlation id is taken from the request, echoed and logged
    Given a worker serving the tiny test model
    When I GET "/worker/ready" with correlation id "corr-test-4801"
    Then the response header "X-Correlation-Id" is "corr-test-4801"
    And a worker log line has "correlation_id" equal to "corr-test-4801"

  @WORKER-4801
  Scenario: A correlation id is generated when absent and echoed
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response header "X-Correlation-Id" is present
    And a worker log line has "correlation_id" equal to the echoed correlation id

  @WORKER-4802 @PB-1007
  Scenario: Neither the token nor the prompt ever reaches a log
    Given a worker serving the tiny test model
    When I execute "my secret prompt about zebras" with max_tokens 4
    Then no worker log line contains the token
    And no worker log line contains "my secret prompt about zebras"

  @WORKER-4802 @source
  Scenario: Redaction is enforced in one place
    Given a worker serving the tiny test model
    Then the folder "src/telemetry" holds a redaction module

  @WORKER-4810 @WORKER-4811 @WORKER-4812
  Scenario: Metrics are served without a token in Prometheus text
    Given a worker serving the tiny test model
    When I GET "/metrics" without a token
    Then the response status is 200
    And the metrics text has the families "worker_orcd_jobs_started_total", "worker_orcd_jobs_completed_total", "worker_orcd_generation_tokens_total", "worker_orcd_cuda_errors_total"
    And the metrics text has the families "worker_orcd_time_to_first_token_seconds", "worker_orcd_inter_token_latency_seconds", "worker_orcd_e2e_request_latency_seconds", "worker_orcd_request_queue_time_seconds", "worker_orcd_memory_bytes"

  @WORKER-4811 @SCHEDULER-M0-002
  Scenario: A completed job moves the counters
    Given a worker serving the tiny test model
    When I read the metrics
    And I execute "Hello" with max_tokens 4
    Then the metric "worker_orcd_jobs_started_total" increased by 1
    And the metric "worker_orcd_jobs_completed_total" increased by 1
    And the metric "worker_orcd_generation_tokens_total" increased by the number of token events
    And the metric "worker_orcd_time_to_first_token_seconds_count" increased by 1
    And the metric "worker_orcd_inter_token_latency_seconds_count" increased by the number of token events less one
    And the metrics event's tokens_per_second is its tokens_out over its decode_time_ms

  @WORKER-4820 @WORKER-4821
  Scenario: Narration at load, seal, inference start and end is prose
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then the worker log has human narration mentioning "load", "seal", "start", "finish"
    And every human narration in the worker log is mostly words, not identifiers

  @WORKER-4822
  Scenario: Narration names the caller's token fingerprint
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 2
    Then a worker log line's human narration mentions the token's fp6 fingerprint

  @WORKER-4811
  Scenario: A failed job is counted by its error code
    Given a worker configured for the larger test model
    And the configuration sets "execution_timeout_ms" to 100
    When the worker is started
    And I read the metrics
    And I execute "Once upon a time" with max_tokens 2000
    Then the stream ends with an "error" event with code "EXECUTION_TIMEOUT"
    And the metric "worker_orcd_jobs_failed_total" increased by 1

  # Issue 13 point 4: one access line per request, and a budget per kind
  # of line so that no client can make the log grow faster than a fixed rate.
  @WORKER-4800 @WORKER-4801
  Scenario: Every request gets one access line with method, route, status, latency and tokens
    Given a worker serving the tiny test model
    When I execute "Once upon a time" with max_tokens 5
    And I GET "/worker/ready" with correlation id "access-line-1"
    Then the worker log has one access line for "GET /worker/ready" with correlation id "access-line-1" with status 200, a latency and the caller's token fingerprint
    And the worker log has one access line for "POST /worker/execute" with status 200, a latency and the caller's token fingerprint
    And the access line of "POST /worker/execute" counts the stream's token events

  @WORKER-4800 @WORKER-4202
  Scenario: Two thousand requests with a wrong token write a few lines and count the rest
    Given a worker serving the tiny test model
    When I note the size of the worker log
    And 2000 requests to "/worker/execute" carry a wrong token
    Then within 25 seconds the access lines and the counts left out of "401 POST /worker/execute" add up to 2000, with at most 60 lines written
    And the worker log grew by less than 64 KiB
    And the ready answer still shows the sealed shard
