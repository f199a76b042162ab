# Spec §2: VRAM residency and the sealed shard contract.
Feature: VRAM residency and sealed shards
  A model becomes usable only as a sealed shard: its bytes are resident on the
  device, their SHA-256 digest is known, and an HMAC seal binds the shard id,
  the digest and the time of sealing. The worker re-checks the seal before
  every job and stops when the resident bytes no longer match.

  @WORKER-4110 @WORKER-4226
  Scenario: A shard handle carries every field of the contract
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response status is 200
    And the response JSON at "/handles/0" has the fields "shard_id", "gpu_device", "vram_bytes", "sealed", "digest", "model_ref", "shard_index", "total_shards", "sealed_at", "seal"
    And the response JSON at "/handles/0/shard_index" is 0
    And the response JSON at "/handles/0/total_shards" is 1
    And the response JSON at "/handles/0/vram_bytes" is a positive integer

  @WORKER-4111
  Scenario: No device pointer appears in any response or log line
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    And I plan the tiny test model
    And I execute "Hello" with max_tokens 4
    Then no response body so far contains something that looks like a memory address
    And no worker log line contains something that looks like a memory address

  @WORKER-4113 @WORKER-4314
  Scenario: The shard digest is the documented SHA-256 digest of the model's tensor data
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles/0/digest" is a SHA-256 in hex
    And the response JSON at "/handles/0/digest" is the documented digest of the served file's tensor data
    And the worker log mentions the tiny model's file digest

  @WORKER-4120 @serial
  Scenario: Without a seal key file the seal is keyed per process while the digest stays the same
    Given a worker serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles/0/seal" is a SHA-256 in hex
    When I remember the shard handle
    And the worker is restarted
    And I GET "/worker/ready"
    Then the shard handle's digest is unchanged and its seal is different

  @WORKER-4120
  Scenario: The seal is an HMAC-SHA256 over shard id, digest and sealed_at that the key holder can verify
    Given a worker configured for the tiny test model
    And the worker is given a seal key file
    When the worker is started
    Then the handle's seal is the HMAC-SHA256 under the seal key of its shard_id, digest and sealed_at
    When I execute "Hello" with max_tokens 2
    Then the stream ends with an "end" event

  @WORKER-4120
  Scenario: A seal key file other users can read stops start-up as a configuration error
    Given a worker configured for the tiny test model
    And the worker is given a seal key file
    And the seal key file can be read by other users
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "seal_key_file"
    And the readiness callback received a "stopped" status with error code "INVALID_CONFIG"

  @WORKER-4120 @WORKER-4122 @serial
  Scenario: A seal made with another key is refused before the next job
    Given a worker configured for the tiny test model
    And the worker is given a seal key file
    When the worker is started
    And I replace the handle's seal with one made with the all-zero key
    And I execute "Hello" with max_tokens 2
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds

  @WORKER-4121 @WORKER-4245 @WORKER-4122 @WORKER-4232 @serial
  Scenario: A flipped resident byte in the first leaf of the shard is detected before the next job and stops the worker
    Given a worker serving the tiny test model
    When I flip the resident byte at the first byte
    And I execute "Hello" with max_tokens 4
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds
    And the readiness callback received a "stopped" status with error code "SEAL_VERIFICATION_FAILED"

  @WORKER-4121 @WORKER-4245 @serial
  Scenario: A flipped resident byte at the very end of the shard is detected before the next job and stops the worker
    Given a worker serving the tiny test model
    When I flip the resident byte at the last byte
    And I execute "Hello" with max_tokens 4
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds
    And the readiness callback received a "stopped" status with error code "SEAL_VERIFICATION_FAILED"

  @WORKER-4121 @WORKER-4245 @serial
  Scenario: A flipped resident byte in the last leaf of the shard is detected before the next job and stops the worker
    Given a worker serving the tiny test model
    When I flip the resident byte at a random byte of the last leaf
    And I execute "Hello" with max_tokens 4
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds
    And the readiness callback received a "stopped" status with error code "SEAL_VERIFICATION_FAILED"

  @WORKER-4121 @WORKER-4245 @serial
  Scenario: A flipped resident byte between the first and the last leaf of the shard is detected before the next job and stops the worker
    Given a worker serving the tiny test model
    When I flip the resident byte at a random byte between the first and the last leaf
    And I execute "Hello" with max_tokens 4
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker exits with code 5 within 15 seconds
    And the readiness callback received a "stopped" status with error code "SEAL_VERIFICATION_FAILED"

  @WORKER-4232 @WORKER-4122 @serial
  Scenario: After a failed seal check the worker no longer claims to be ready
    Given a worker serving the tiny test model
    When I inject the fault "flip_resident_byte" at offset 7
    And I execute "Hello" with max_tokens 4
    Then the execution is refused with code "SEAL_VERIFICATION_FAILED"
    And the worker no longer reports ready

  @WORKER-4121 @WORKER-4245
  Scenario: The seal is checked before every job
    Given a worker serving the tiny test model
    When I read the metrics
    And I execute "Hello" with max_tokens 2
    And I execute "Hello again" with max_tokens 2
    Then the metric "worker_orcd_seal_verifications_total" increased by 2

  @WORKER-4112
  Scenario: A sealed shard serves a job immediately
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 2
    Then the stream starts with a "started" event
    And the started event has queue_position 0

  @WORKER-4102
  Scenario: Host memory stages and verifies the model; the decode path reads the engine's resident copy
    Given a worker serving the tiny test model
    When I execute "Hello" with max_tokens 4
    Then the stream ends with an "end" event
    And the worker log mentions the tiny model's file digest before the shard's resident digest

  @WORKER-4101 @source
  Scenario: Weights are in plain device memory, never managed or host-mapped
    Then the source under "src/gpu" never calls "Managed"
    And the source under "src/gpu" never calls "cuMemHostAlloc"
    And the source under "src/gpu" never calls "cuMemHostRegister"

  @WORKER-4100 @gpu
  Scenario: On the GPU the weights are held in device memory
    Given a worker serving the tiny test model
    Then the metrics have a positive "weights" memory sample on device "cuda"

  @WORKER-4210 @WORKER-4214
  Scenario: Plan finds a model too large for the device's free memory infeasible, naming needed and available bytes
    Given a worker configured for the tiny test model
    And the configuration sets "max_context" to 1000000
    When the worker is started
    And a model whose KV cache at that context exceeds the device's free memory is in the model root
    And I plan that model
    Then the response JSON at "/feasible" is false
    And the response JSON at "/reason" mentions "needed"
    And the response JSON at "/reason" mentions "available"

  # The backend's memory stands in for VRAM on the cpu backend: the code is
  # VRAM_OOM on cuda and HOST_OOM on cpu (4952), fixed by the run's backend.
  @WORKER-4103 @WORKER-4952 @serial
  Scenario: A worker told to load a model larger than the device's free memory stops with the backend's out-of-memory code before allocating
    Given a worker configured for the huge-kv test model
    And the configuration sets "max_context" to 1000000
    When the worker is started
    Then the worker exits with a non-zero code within 120 seconds
    And the readiness callback received a "stopped" status with the backend's out-of-memory code
    And the worker's out-of-memory log line names the bytes needed and the bytes available
