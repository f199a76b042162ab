# Spec §3 (WORKER-4222) and §4 (WORKER-4313): detached Ed25519 model signatures.
Feature: Signed models
  An operator who configures a trusted model-signing key gets a worker that
  loads and admits only models whose SHA-256 digest is signed by that key. A
  signature that is missing, does not verify, or cannot be verified (no key)
  is refused with MODEL_SIGNATURE_INVALID and changes nothing.

  @WORKER-4222 @WORKER-4313
  Scenario: A signed model loads under the trusted key and a commit with its signature returns its handle
    Given a worker configured for the tiny test model
    And the worker trusts the test model-signing key
    And the start-up model has a good signature in its signature file
    When the worker is started
    Then the worker becomes ready
    And the worker log mentions "verifies against the trusted model-signing key"
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit the tiny test model with its good signature
    Then the response status is 200
    And the response JSON at "/handle" is the remembered shard handle
    When I upload the served model for commit with its digest and its good signature
    Then the response status is 200
    And the response JSON at "/handle" is the remembered shard handle

  @WORKER-4313
  Scenario: A commit whose signature has one flipped bit is refused and the sealed model keeps serving
    Given a worker serving the tiny test model signed under a trusted key
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit the tiny test model with its signature with one bit flipped
    Then the response status is 422
    And the error code is "MODEL_SIGNATURE_INVALID"
    And the error message mentions "does not verify against the trusted key"
    And the worker still serves the remembered shard handle
    When I upload the served model for commit with its digest and its signature with one bit flipped
    Then the response status is 422
    And the error code is "MODEL_SIGNATURE_INVALID"
    And the worker still serves the remembered shard handle
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4313
  Scenario: A different model signed by another key is refused for its signature before the conflict check
    Given a worker serving the tiny test model signed under a trusted key
    And a second tiny model in the model root
    When I commit the second tiny model with a signature by another key
    Then the response status is 422
    And the error code is "MODEL_SIGNATURE_INVALID"
    And the worker process is still running

  @WORKER-4313
  Scenario: With a trusted key configured, a commit without a signature is refused
    Given a worker serving the tiny test model signed under a trusted key
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit the tiny test model as shard "unsigned"
    Then the response status is 422
    And the error code is "MODEL_SIGNATURE_INVALID"
    And the error message mentions "has no signature"
    When I upload the served model for commit with its digest and no signature
    Then the error code is "MODEL_SIGNATURE_INVALID"
    And the worker still serves the remembered shard handle

  @WORKER-4222 @WORKER-4313
  Scenario: A start-up model whose signature does not verify is never loaded
    Given a worker configured for the tiny test model
    And the worker trusts the test model-signing key
    And the start-up model has a signature with one bit flipped in its signature file
    When the worker is started
    Then the worker exits with code 3 within 30 seconds
    And the worker log mentions "MODEL_SIGNATURE_INVALID"
    And the worker log mentions "model_signature_file"
    And the worker log never mentions "sealed it as shard"
    And the readiness callback received a "stopped" status with error code "MODEL_SIGNATURE_INVALID"
    And the status callback has an "exit_code" of 3

  @WORKER-4222
  Scenario: A trusted key without a start-up signature stops the worker as a configuration error
    Given a worker configured for the tiny test model
    And the worker trusts the test model-signing key
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "model_signature_file"

  @WORKER-4222 @WORKER-4313
  Scenario: A key file that is not a key stops the worker naming the field
    Given a worker configured for the tiny test model
    And the trusted model-signing key file holds something that is not a key
    And the start-up model has a good signature in its signature file
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "model_signing_pubkey_file"
    And the readiness callback received a "stopped" status with error code "INVALID_CONFIG"

  @WORKER-4313
  Scenario: A start-up signature without a trusted key stops the worker naming both fields
    Given a worker configured for the tiny test model
    And the start-up model has a good signature in its signature file
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "model_signature_file"
    And the worker log mentions "model_signing_pubkey_file"
    And "worker-orcd --help" mentions "--model-signing-pubkey-file", "--model-signature-file"
