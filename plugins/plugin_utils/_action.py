# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection's action plugins share. Private: controller-side only (modules cannot
import plugin_utils), free to change."""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ArgSpecAction(ActionBase):
    """An action plugin whose options are ``ARGUMENT_SPEC``, the ones its documentation in
    plugins/modules states. A bad option fails the task with one line naming it, before
    ``run_action`` sees anything (ArgumentSpecValidator underneath)."""

    TRANSFERS_FILES = False
    ARGUMENT_SPEC: dict = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        return self.run_action(args, result, task_vars or {})

    def run_action(self, args, result, task_vars):
        """The task's result, from the validated ``args``; ``result`` is ActionBase's start."""
        raise NotImplementedError


def one_line(text, limit=300):
    """``text`` (a message, an exception) as one line of at most ``limit`` characters."""
    return " ".join(str(text or "").split())[:limit]
