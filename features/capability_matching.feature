# Spec §7: model capability descriptors (MCD) and the engine capability profile (ECP).
Feature: Capability matching between model and engine
  The worker admits a model only when everything the model needs is within
  what this build on this device can do, and says precisely why when not.

  @WORKER-4600 @WORKER-4601 @WORKER-4603
  Scenario: Plan reports the model's capability descriptor
    Given a worker serving the tiny test model
    When I plan the tiny test model
    Then the response JSON at "/mcd" has the fields "model_id", "positional", "attention", "quant", "context_max", "vocab_size"
    And the response JSON at "/mcd/vocab_size" is 512

  @WORKER-4602
  Scenario: A sidecar descriptor wins over GGUF metadata and the disagreement is reported
    Given a worker serving the tiny test model
    And a sidecar MCD for the tiny test model that states context_max 32
    When I plan the tiny test model
    Then the response JSON at "/mcd/context_max" is 32
    And the worker log mentions "sidecar"

  @WORKER-4603
  Scenario: A malformed sidecar descriptor is refused before planning
    Given a worker serving the tiny test model
    And a sidecar MCD for the tiny test model that is not valid JSON
    When I plan the tiny test model
    Then the error code is "MODEL_LOAD_FAILED"
    And the error message mentions "sidecar"

  @WORKER-4610 @WORKER-4611 @WORKER-4612
  Scenario: The engine profile is advertised at start-up
    Given a worker serving the tiny test model
    Then the readiness callback received a "ready" announcement
    And the announcement JSON at "/ecp" has the fields "worker_id", "supports_positional", "supports_attention", "supports_quant", "max_context", "vram_bytes"

  @WORKER-4613
  Scenario: The engine profile is computed from the configuration the worker was started with
    Given a worker configured for the tiny test model
    And the configuration sets "worker_id" to "ecp-first"
    And the configuration sets "max_context" to 96
    When the worker is started
    Then ready announcement 1 carries an engine profile built from the configuration
    Given the configuration sets "worker_id" to "ecp-second"
    And the configuration sets "max_context" to 200
    When the worker is restarted
    Then ready announcement 2 carries an engine profile built from the configuration
    And the engine profiles of ready announcements 1 and 2 differ exactly in worker_id and max_context

  @WORKER-4003
  Scenario: A model whose needs exceed the engine profile is never admitted, not even at start-up
    Given a worker configured for the tiny test model
    And a tiny model whose architecture needs an unsupported positional encoding
    And the worker is told to load that model at start-up
    When the worker is started
    Then the worker exits with a non-zero code within 30 seconds
    And the readiness callback received a "stopped" status with error code "CAPABILITY_MISMATCH"
    And the worker log mentions "alibi"

  @WORKER-4003 @WORKER-4620 @WORKER-4621 @WORKER-4622 @WORKER-4623
  Scenario: A model needing a capability outside the profile is refused, naming both sides
    Given a worker serving the tiny test model
    And a tiny model whose architecture needs an unsupported positional encoding
    When I plan that model
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "alibi"
    And the response JSON at "/reason" mentions "supported: rope"
    When I plan that model
    Then the response JSON at "/reason" is the same as the previous answer's

  @WORKER-4623
  Scenario: Matching never silently falls back to another engine
    Given a worker serving the tiny test model
    And a tiny model whose architecture needs an unsupported positional encoding
    When I plan that model
    Then the response JSON at "/feasible" is false
    And the worker log never mentions "falling back"
