"""Authorisation: the approver registry, signed approvals of a contract's exact content, and the gate.

- ``registry``: ``<config dir>/approvers.yaml`` (name, role, Ed25519/OpenSSH public key), recorded in the
  ledger whenever it changes;
- ``sshsig``: approver keys and OpenSSH SSHSIG signatures (``ssh-keygen -Y sign/verify`` compatible);
- ``approvals``: the signed statement, ``approve``/``revoke``, and the assessment shared by gate and status;
- ``gate``: what the ``authorise`` stage calls;
- ``testing``: throwaway approvers for test suites.

Framework-free: never imports Airflow. See docs/audit.md.
"""
