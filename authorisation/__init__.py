"""Authorisation: the approver registry, signed approvals of a contract's exact content, and the gate.

- ``registry``: ``<config dir>/approvers.yaml`` (name, role, Ed25519/OpenSSH public key), recorded in the
  ledger whenever it changes;
- ``approver_keys``: approver keys and their OpenSSH SSHSIG signatures (``ssh-keygen -Y sign/verify``
  compatible; the framing lives in ``core.sshsig``);
- ``approvals``: the signed statement, ``approve``/``revoke``, and the assessment shared by the run checks
  and status; an approval pins the source catalogue it was made against;
- ``catalogue_approvals``: the same for source catalogues (``configs/sources/<connection>.yaml``), signed by
  their owner (an Information Asset Manager);
- ``signed_records``: what every signed approval record must pass (registry, key history, signature, withdrawals);
- ``run_checks``: what the ``authorise`` stage checks before a run (validity dates, assurance, the catalogue,
  approvals).

Framework-free: never imports Airflow. See docs/audit.md.
"""
