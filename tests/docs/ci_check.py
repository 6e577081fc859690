#!/usr/bin/env python3
"""Reads contrib/ci/ for tests/docs/test_contrib.sh.

  ci_check.py gitlab-structure .gitlab-ci.yml    problems, one a line
  ci_check.py gitlab-job .gitlab-ci.yml JOB      the job as a bash script
  ci_check.py jenkins-structure Jenkinsfile      problems, one a line
  ci_check.py jenkins-stage Jenkinsfile STAGE    VAR=value lines, ==SCRIPT==, the shell
  ci_check.py junit-names FILE.xml               the testcase names, sorted

There is no GitLab or Jenkins here. The GitLab file is parsed with PyYAML
and its jobs resolved (extends, variables) as GitLab does for the keys this
file uses. The Jenkinsfile is read with a small tokenizer of Groovy
(comments, the four kinds of string, words, brackets) into a tree of
`name(args) { body }` blocks, and checked for what a declarative pipeline
needs: one pipeline block, known sections at each level, an agent where
`agent none` asks for one per stage, steps, post, input.
"""
import re
import shlex
import sys
import xml.etree.ElementTree as ET

import yaml

# ---------------------------------------------------------------------------
# GitLab

GITLAB_TOP = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache",
              "before_script", "after_script"}
GITLAB_JOB = {"stage", "script", "before_script", "after_script", "variables", "tags", "when",
              "allow_failure", "artifacts", "environment", "extends", "resource_group", "timeout", "rules",
              "needs", "dependencies", "retry", "interruptible", "only", "except", "image", "services",
              "cache", "coverage", "parallel", "trigger", "release", "secrets", "id_tokens", "inherit",
              "hooks", "pages", "manual_confirmation"}
GITLAB_ARTIFACTS = {"paths", "exclude", "expire_in", "expose_as", "name", "public", "access", "reports",
                    "untracked", "when"}


def gitlab_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def gitlab_resolve(doc, name, err, depth=0):
    """The job with its extends merged in (hashes deep, the rest replaced)."""
    job = dict(doc[name])
    bases = job.pop("extends", [])
    if isinstance(bases, str):
        bases = [bases]
    merged = {}
    for b in bases:
        if b not in doc or depth > 10:
            err.append("%s: extends %s, which is not there" % (name, b))
            continue
        merged = merge(merged, gitlab_resolve(doc, b, err, depth + 1))
    return merge(merged, job)


def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def gitlab_jobs(doc):
    return [k for k in doc if k not in GITLAB_TOP and not k.startswith(".")]


def gitlab_structure(path):
    err = []
    doc = gitlab_load(path)
    if not isinstance(doc, dict):
        return ["not a mapping"]
    if doc.get("stages") != ["staging", "production"]:
        err.append("stages: %r, wanted [staging, production]" % doc.get("stages"))
    for k, v in doc.items():
        if k in GITLAB_TOP:
            continue
        if not isinstance(v, dict):
            err.append("%s: not a job (a mapping)" % k)
            continue
        bad = set(v) - GITLAB_JOB
        if bad:
            err.append("%s: unknown job keys %s" % (k, sorted(bad)))
        bad = set(v.get("artifacts", {})) - GITLAB_ARTIFACTS
        if bad:
            err.append("%s: unknown artifacts keys %s" % (k, sorted(bad)))
    by_stage = {}
    for name in gitlab_jobs(doc):
        job = gitlab_resolve(doc, name, err)
        stage = job.get("stage", "test")
        by_stage.setdefault(stage, []).append(name)
        if stage not in doc.get("stages", []):
            err.append("%s: stage %s is not in stages" % (name, stage))
        script = job.get("script")
        if not isinstance(script, list) or not all(isinstance(s, str) for s in script):
            err.append("%s: script is not a list of strings" % name)
            script = []
        text = "\n".join(script)
        if "kfleet run" not in text or "--junit" not in text:
            err.append("%s: no `kfleet run ... --junit`" % name)
        art = job.get("artifacts", {})
        if art.get("when") != "always":
            err.append("%s: artifacts:when is %r, not always (a failed job keeps nothing)" % (name, art.get("when")))
        if not art.get("paths"):
            err.append("%s: no artifacts:paths" % name)
        if not art.get("reports", {}).get("junit"):
            err.append("%s: no artifacts:reports:junit" % name)
        if "KFLEET_LIMIT" not in job.get("variables", {}):
            err.append("%s: no KFLEET_LIMIT variable" % name)
        when = job.get("when", "on_success")
        if stage == "production" and when != "manual":
            err.append("%s: when: %s, wanted manual" % (name, when))
        if stage == "production" and job.get("allow_failure", True) is not False:
            err.append("%s: a manual job without allow_failure: false does not hold the pipeline" % name)
        if stage == "staging" and when != "on_success":
            err.append("%s: when: %s, wanted on_success" % (name, when))
    for st in ("staging", "production"):
        if len(by_stage.get(st, [])) != 1:
            err.append("stage %s: jobs %s, wanted one" % (st, by_stage.get(st, [])))
    return err


def gitlab_job(path, name):
    """The job as GitLab's shell executor runs it: bash, set -eo pipefail,
    the variables exported (a value already in the environment wins, as a
    project's CI/CD variable would), the script lines in order. A last
    comment line gives the artifacts for the test."""
    doc = gitlab_load(path)
    err = []
    job = gitlab_resolve(doc, name, err)
    if err:
        sys.exit("\n".join(err))
    env = merge(doc.get("variables", {}), job.get("variables", {}))
    lines = ["#!/usr/bin/env bash", "set -eo pipefail"]
    for k, v in env.items():
        lines.append("export %s=${%s-%s}" % (k, k, shlex.quote(str(v))))
    lines += job.get("before_script", []) + job["script"]
    art = job["artifacts"]
    lines.append("# artifacts: %s junit: %s" % (" ".join(art["paths"]), art["reports"]["junit"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Jenkins

TOKEN = re.compile(r"""
    (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<str3>'''.*?'''|\"\"\".*?\"\"\")
  | (?P<str>'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<num>[0-9]+)
  | (?P<punct>[{}()\[\],:=])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.S | re.X)

PIPELINE_SECTIONS = {"agent", "options", "parameters", "environment", "stages", "post", "triggers", "tools",
                     "libraries"}
STAGE_SECTIONS = {"agent", "environment", "options", "input", "when", "steps", "post", "tools", "stages",
                  "parallel", "matrix", "failFast"}
POST_CONDITIONS = {"always", "changed", "fixed", "regression", "aborted", "failure", "success", "unstable",
                   "unsuccessful", "cleanup"}


def tokenize(src):
    toks = []
    for m in TOKEN.finditer(src):
        if m.lastgroup in ("comment", "space"):
            continue
        toks.append((m.lastgroup, m.group()))
    return toks


def balanced(toks):
    stack = []
    for kind, t in toks:
        if kind != "punct":
            continue
        if t in "{([":
            stack.append(t)
        elif t in "})]":
            if not stack or "{([".index(stack.pop()) != "})]".index(t):
                return "unbalanced '%s'" % t
    return "unclosed '%s'" % "".join(stack) if stack else None


class Block:
    def __init__(self, name, args, body):
        self.name, self.args, self.body = name, args, body

    def blocks(self, name=None):
        return [b for b in self.body if isinstance(b, Block) and (name is None or b.name == name)]

    def leaves(self):
        return [t for t in self.body if not isinstance(t, Block)]


def parse(toks, i=0, name="(top)", args=None):
    """A tree of blocks: WORD [( ARGS )] { BODY }. Everything else in a body
    is a leaf token (a call without a block keeps its parentheses as leaves)."""
    body = []
    while i < len(toks):
        kind, t = toks[i]
        if t == "}":
            return Block(name, args, body), i + 1
        if kind == "word":
            j, a = i + 1, None
            if j < len(toks) and toks[j][1] == "(":
                k, d = j, 0
                while k < len(toks):
                    d += toks[k][1] == "("
                    d -= toks[k][1] == ")"
                    if d == 0:
                        break
                    k += 1
                a = toks[j + 1:k]
                j = k + 1
            if j < len(toks) and toks[j][1] == "{":
                blk, i = parse(toks, j + 1, t, a)
                body.append(blk)
                continue
        body.append((kind, t))
        i += 1
    return Block(name, args, body), i


def unquote(t):
    kind, s = t
    if kind == "str3":
        return s[3:-3]
    if kind == "str":
        return s[1:-1]
    return None


def assignments(block):
    """NAME = 'value' in an environment block."""
    leaves, out = block.leaves(), {}
    for a, b, c in zip(leaves, leaves[1:], leaves[2:]):
        if a[0] == "word" and b[1] == "=" and c[0] == "str":
            out[a[1]] = unquote(c)
    return out


def named_args(toks):
    """name: 'value' pairs of a call's arguments."""
    out = {}
    for a, b, c in zip(toks, toks[1:], toks[2:]):
        if a[0] == "word" and b[1] == ":" and c[0] in ("str", "num"):
            out[a[1]] = unquote(c) if c[0] == "str" else c[1]
    return out


def jenkins_load(path):
    with open(path) as f:
        src = f.read()
    toks = tokenize(src)
    err = []
    why = balanced(toks)
    if why:
        return None, {}, [why]
    top, _ = parse(toks)
    defs = {}
    lv = top.leaves()
    for a, b, c, d in zip(lv, lv[1:], lv[2:], lv[3:]):
        if a == ("word", "def") and b[0] == "word" and c[1] == "=" and d[0] in ("str", "str3"):
            defs[b[1]] = d
    return top, defs, err


def stage_script(stage, defs, err):
    steps = stage.blocks("steps")
    if not steps:
        err.append("stage %s: no steps" % stage_name(stage))
        return None
    lv = steps[0].leaves()
    for a, b in zip(lv, lv[1:]):
        if a == ("word", "sh"):
            tok = defs.get(b[1], b) if b[0] == "word" else b
            if tok[0] not in ("str", "str3"):
                err.append("stage %s: sh %s is not a string" % (stage_name(stage), b[1]))
                return None
            text = unquote(tok)
            if tok[1][0] == '"' and "$" in text:
                err.append("stage %s: the shell is a Groovy \"...\" string with $: Groovy would expand it"
                           % stage_name(stage))
            if "\\" in text:
                err.append("stage %s: a backslash in the shell: Groovy would take it as an escape"
                           % stage_name(stage))
            return text
    err.append("stage %s: no sh step" % stage_name(stage))
    return None


def stage_name(stage):
    return unquote(stage.args[0]) if stage.args and stage.args[0][0] == "str" else "?"


def jenkins_structure(path):
    top, defs, err = jenkins_load(path)
    if top is None:
        return err
    pipes = top.blocks("pipeline")
    if len(pipes) != 1 or len(top.blocks()) != 1:
        return err + ["wanted one pipeline { } block at the top, got %s" % [b.name for b in top.blocks()]]
    p = pipes[0]
    for b in p.blocks():
        if b.name not in PIPELINE_SECTIONS:
            err.append("pipeline: unknown section %s" % b.name)
    lv = p.leaves()
    agent_none = any(a == ("word", "agent") and b == ("word", "none") for a, b in zip(lv, lv[1:]))
    if not agent_none and not p.blocks("agent"):
        err.append("pipeline: no agent")
    for b in p.blocks("environment"):
        if not assignments(b):
            err.append("pipeline: an empty environment")
    stages_blk = p.blocks("stages")
    if len(stages_blk) != 1:
        return err + ["pipeline: %d stages blocks" % len(stages_blk)]
    stages = stages_blk[0].blocks("stage")
    names = [stage_name(s) for s in stages]
    if names != ["Staging", "Production"]:
        err.append("stages %s, wanted Staging, Production" % names)
    if len(stages_blk[0].blocks()) != len(stages):
        err.append("stages: a block that is not a stage")
    for s in stages:
        nm = stage_name(s)
        for b in s.blocks():
            if b.name not in STAGE_SECTIONS:
                err.append("stage %s: unknown section %s" % (nm, b.name))
        if agent_none and not s.blocks("agent"):
            err.append("stage %s: no agent (the pipeline has agent none)" % nm)
        text = stage_script(s, defs, err)
        if text is not None and ("kfleet run" not in text or "--junit" not in text):
            err.append("stage %s: no `kfleet run ... --junit` in its shell" % nm)
        if not s.blocks("environment") or "KFLEET_LIMIT" not in assignments(s.blocks("environment")[0]):
            err.append("stage %s: no KFLEET_LIMIT in its environment" % nm)
        posts = s.blocks("post")
        for b in (posts[0].blocks() if posts else []):
            if b.name not in POST_CONDITIONS:
                err.append("stage %s: post: unknown condition %s" % (nm, b.name))
        always = posts[0].blocks("always") if posts else []
        words = [t for k, t in always[0].leaves()] if always else []
        for step in ("junit", "archiveArtifacts"):
            if step not in words:
                err.append("stage %s: post { always { } } has no %s" % (nm, step))
        inputs = s.blocks("input")
        if nm == "Production":
            ilv = inputs[0].leaves() if inputs else []
            if not any(a == ("word", "message") and b[0] == "str" for a, b in zip(ilv, ilv[1:])):
                err.append("stage Production: no input { message '...' }")
        elif inputs:
            err.append("stage %s: asks for input" % nm)
    return err


def jenkins_stage(path, want):
    top, defs, err = jenkins_load(path)
    if top is None:
        sys.exit("\n".join(err))
    p = top.blocks("pipeline")[0]
    env = {}
    for par in p.blocks("parameters"):
        lv = par.leaves()
        # string(name: 'X', defaultValue: 'Y', ...): leaves "string" "(" ... ")"
        for i, t in enumerate(lv):
            if t == ("word", "string") and i + 1 < len(lv) and lv[i + 1][1] == "(":
                k = i + 1
                while lv[k][1] != ")":
                    k += 1
                a = named_args(lv[i + 2:k])
                env[a["name"]] = a.get("defaultValue", "")
    for b in p.blocks("environment"):
        env.update(assignments(b))
    for s in p.blocks("stages")[0].blocks("stage"):
        if stage_name(s) != want:
            continue
        for b in s.blocks("environment"):
            env.update(assignments(b))
        text = stage_script(s, defs, err)
        if text is None:
            sys.exit("\n".join(err))
        return "\n".join(["%s=%s" % kv for kv in env.items()] + ["==SCRIPT==", text])
    sys.exit("no stage %s" % want)


def junit_names(path):
    root = ET.parse(path).getroot()
    return " ".join(sorted(tc.get("name") for tc in root.iter("testcase")))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gitlab-structure":
        print("\n".join(gitlab_structure(*args)), end="")
    elif cmd == "gitlab-job":
        print(gitlab_job(*args))
    elif cmd == "jenkins-structure":
        print("\n".join(jenkins_structure(*args)), end="")
    elif cmd == "jenkins-stage":
        print(jenkins_stage(*args))
    elif cmd == "junit-names":
        print(junit_names(*args))
    else:
        sys.exit("ci_check.py: unknown command %s" % cmd)


if __name__ == "__main__":
    main()
