# Spec §13 and the proof-bundle rules: how the project proves what it claims.
Feature: Testing and proof bundles
  Every run of this suite leaves a proof bundle: what ran, against which
  binary and model, what each requirement's scenarios showed, and the streams
  they saw. None of it contains a secret.

  @WORKER-4995 @source
  Scenario: Unit tests cover parsing, matching, validation, sealing and the boundary
    Then the source files "src/model/gguf.rs", "src/model/mcd.rs", "src/shard/seal.rs", "src/gpu/mod.rs" have unit tests

  @WORKER-4996 @PB-1001 @PB-1003 @unit
  Scenario: The run writes its proof bundle under the proof root
    Then this run's proof bundle is a folder "bdd/<run id>" under the proof root
    And the proof root is LLORCH_PROOF_DIR when set, else the repository's proof-bundles folder

  @PB-1002 @unit
  Scenario: The run id comes from LLORCH_RUN_ID, else the time and git sha, else epoch seconds
    Then the run id is LLORCH_RUN_ID when set
    And without LLORCH_RUN_ID the run id looks like "YYYYMMDD-HHMMSS-<sha8>" or epoch seconds

  @WORKER-4997 @PB-1004 @PB-1006 @PB-1012 @PB-BDD
  Scenario: A streamed scenario leaves its transcript as NDJSON with a proof-bundle header
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then this scenario's SSE transcript is in the bundle as NDJSON
    And its first line is the proof-bundle meta record
    And each following line is one JSON event

  @PB-1004 @PB-1012 @unit
  Scenario: The run configuration is pretty JSON with generated_by
    Then the bundle's "run_config.json" is pretty JSON with "generated_by"
    And the bundle's "run_config.json" names the binary version, the git sha, the model digests, the seeds and the GPU

  @PB-1007
  Scenario: No token is written into a bundle
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then no file of the proof bundle contains a token of this run

  @WORKER-4998 @unit
  Scenario: REQUIRE_REAL_GPU makes the GPU scenarios mandatory
    Then with REQUIRE_REAL_GPU=1 the harness runs @gpu scenarios on the cuda backend
    And with REQUIRE_REAL_GPU=1 a scenario whose model file is missing runs and fails instead of skipping
    And without it the harness skips @gpu scenarios and counts them as not applicable

  @HARNESS-BINARY @unit
  Scenario: The harness refuses a worker built without test hooks or from other sources
    Then the harness accepts the worker binary under test
    And the harness refuses a worker whose build-info lacks the test-hooks feature
    And the harness refuses a worker whose build-info names other sources

  @HARNESS-TRACE @unit
  Scenario: A passing source check never makes a behavioural requirement pass nor hides its skipped scenario
    Then a requirement whose behavioural scenario is GPU only and whose source check passed is reported GPU only
    And a requirement with only a passing source check is reported as static evidence only
    And a requirement flagged STATIC passes on its source check
    And a requirement whose only scenario needs 2 GPUs is neither passing nor failing

  @HARNESS-TRACE @unit
  Scenario: Markers that disagree with the index flags are catalogue problems
    Then a requirement not flagged GPU whose every scenario is @gpu is a catalogue problem
    And a requirement flagged GPU named by a scenario without @gpu is a catalogue problem
    And a @post-m0 scenario naming a requirement not flagged POST-M0 is a catalogue problem

  @WORKER-4997 @snapshot
  Scenario: The shapes of the API answers match their reviewed snapshots
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON matches the snapshot "ready_response" with ids, digests and times redacted
    When I plan the tiny test model
    Then the response JSON matches the snapshot "plan_response" with ids, digests and times redacted
    When I GET "/worker/ready" without a token
    Then the response JSON matches the snapshot "auth_failed_response" with ids, digests and times redacted
