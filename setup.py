"""Package mapping for LDP.

The top-level folders are fixed by the project's brief. They map to one import package, `ldp`:

    platform/ldp/    -> ldp            (core library; `platform/` is only a source root, so the
                                        standard library's `platform` module is never shadowed)
    jobs/            -> ldp.jobs       (jobs layer: submit, sweep, train-all)
    cluster/         -> ldp.cluster    (reaching Ray, strategy choice, memory estimates)
    adapters_store/  -> ldp.store      (the registry over fsspec)

Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

MAPPED = {"ldp.jobs": "jobs", "ldp.cluster": "cluster", "ldp.store": "adapters_store"}

packages = find_packages("platform", include=["ldp", "ldp.*"])
package_dir = {"": "platform"}
for name, folder in MAPPED.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
