# Spec §6: tensor parallel over NCCL. Deferred past M0: every scenario here is @post-m0.
@post-m0
Feature: Tensor-parallel execution across GPUs
  A model too large for one GPU is split over the GPUs of a device mask. The
  group is formed only by the authenticated coordinator and fails as a whole.

  @WORKER-4500 @WORKER-4721 @gpu
  Scenario: A model is split across the GPUs of a device mask
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles" is an array of 2

  @WORKER-4501
  Scenario: Each shard is sealed on its own
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When I GET "/worker/ready"
    Then the response JSON at "/handles/1/shard_index" is 1
    And the response JSON at "/handles/1/total_shards" is 2

  @WORKER-4502 @gpu
  Scenario: Tensor-parallel output equals single-GPU output within tolerance
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When I execute "Hello" with max_tokens 16
    Then the token stream equals the single-GPU stream for the same request

  @WORKER-4503
  Scenario: Plan reports one shard per GPU
    Given a worker serving the tiny test model
    When I POST to "/worker/plan" with body:
      """
      {"model_ref": "{tiny_model}", "shard_layout": "tensor_parallel", "tp_degree": 2}
      """
    Then the response JSON at "/shard_plan" is an array of 2

  @WORKER-4510 @WORKER-4520
  Scenario: The NCCL unique id travels only over the authenticated channel
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When I POST to "/worker/tp/join" without a token with body:
      """
      {"nccl_unique_id": "00", "rank": 1}
      """
    Then the response status is 401

  @WORKER-4511
  Scenario: A worker joins only the group its coordinator named
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When a rank is asked to join a group its coordinator did not name
    Then the join is refused

  @WORKER-4512 @WORKER-4522
  Scenario: An NCCL failure aborts the job and stops the whole group
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    When one rank is killed during a job
    Then the job ends with an "error" event
    And every rank of the group exits

  @WORKER-4513
  Scenario: The NCCL environment is set explicitly
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    Then the worker log mentions "NCCL_NVLS_ENABLE=0"

  @WORKER-4521
  Scenario: Group changes are narrated
    Given a tensor-parallel worker group over 2 GPUs serving the tiny test model
    Then the worker log has a human narration of the group being formed
