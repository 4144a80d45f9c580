#!/usr/bin/env python3
"""Validates Kubernetes manifests offline; run by stsync-user/tests/k8s_manifests.rs with the
venv `cargo xtask test` installs (requirements.txt beside this file).

    validate.py --kubernetes-version 1.30 --kubernetes-version 1.37 --crds DIR FILE...

Every YAML document in each FILE is checked:
- core kinds against kubernetes-validate's JSON schemas for each version given, strictly
  (an unknown field is an error; a kind with no schema is an error, not the tool's warning);
- kinds defined by a CustomResourceDefinition in DIR (the vendored Prometheus Operator
  CRDs) against that CRD's openAPIV3Schema, with unknown fields refused where the schema
  does not preserve them, as the API server's pruning would silently drop them;
- a kustomize Kustomization for its shape (its files are checked by the Rust test).

On success prints {"<file name>": [documents...]} as JSON on stdout, for the Rust test to
check the manifests against the binary; on failure prints every error on stderr and exits 1.
Reads no network.
"""

import argparse
import copy
import json
import os
import sys

import jsonschema
import kubernetes_validate.utils as kv
import yaml

KUSTOMIZE_KEYS = {
    "apiVersion", "kind", "metadata", "resources", "namespace", "labels", "commonLabels",
    "commonAnnotations", "images", "patches", "configMapGenerator", "secretGenerator",
    "generatorOptions", "namePrefix", "nameSuffix", "components", "replicas",
}


def strict(schema):
    """A copy of an OpenAPI schema refusing properties it does not list."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if isinstance(s, dict):
            if ("properties" in s and "additionalProperties" not in s
                    and not s.get("x-kubernetes-preserve-unknown-fields")):
                s["additionalProperties"] = False
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    walk(schema)
    return schema


def load_crds(directory):
    crds = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(directory, name)) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    key = ("%s/%s" % (spec["group"], version["name"]), spec["names"]["kind"])
                    crds[key] = strict(version["schema"]["openAPIV3Schema"])
    return crds


def where(path):
    return ".".join(str(p) for p in path) or "(top)"


def check(doc, versions, crds):
    """Errors in one document."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion and kind)"]
    key = (doc["apiVersion"], doc["kind"])
    if key in crds:
        errors = ["%s: %s" % (where(e.absolute_path), e.message)
                  for e in jsonschema.Draft7Validator(crds[key]).iter_errors(doc)]
        meta = doc.get("metadata") or {}
        for field in ("name", "namespace"):
            if not isinstance(meta.get(field), str) or not meta[field]:
                errors.append("metadata.%s: missing" % field)
        return errors
    if doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
        errors = ["%s: not a Kustomization field" % k for k in doc if k not in KUSTOMIZE_KEYS]
        resources = doc.get("resources")
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            errors.append("resources: must be a list of paths")
        return errors
    errors = []
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            errors.append("Kubernetes %s: %s: %s" % (e.version, where(e.path), e.message))
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError, kv.VersionNotSupportedError) as e:
            errors.append("Kubernetes %s: %s" % (version, e.message))
    return errors


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubernetes-version", action="append", required=True)
    p.add_argument("--crds", required=True)
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    crds = load_crds(args.crds)
    out, errors = {}, []
    for path in args.files:
        with open(path) as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                errors.append("%s: not YAML: %s" % (path, e))
                continue
        if not docs:
            errors.append("%s: no document" % path)
        out[os.path.basename(path)] = docs
        for i, doc in enumerate(docs, 1):
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc, dict) else None
            what = "%s document %d (%s %s)" % (
                path, i, doc.get("kind") if isinstance(doc, dict) else "?", name)
            errors += ["%s: %s" % (what, e) for e in check(doc, args.kubernetes_version, crds)]
    if errors:
        for e in errors:
            print("INVALID " + e, file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
